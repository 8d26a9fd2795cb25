"""The translation examples: the machine's own gettext catalogues by default, or --data.

Embedded default (no download): every compiled catalogue of one language on this machine,
`/usr/share/locale/<lang>/LC_MESSAGES/*.mo`, without symbolic links (which repeat another
catalogue) and without iso-codes' `iso_*.mo` (lists of country, language and currency names,
not interface text: one of them alone, iso_639-3, holds 7,900 language names). Each
catalogue's singular (msgid, msgstr) pairs are kept when the English string is one line of at
most MAX_CHARS characters holding a letter and the translation is one line too.
The pairs are de-duplicated by English string over all catalogues (the first catalogue in name
order keeps it), so a string belongs to one catalogue only. The held-out split takes whole
catalogues, drawn in a seeded order until it holds the test fraction of the pairs: no
interface string is seen in training and tested, and the test catalogues are programs the model
never saw.

--data takes a `source<TAB>target` TSV, a .po or .mo catalogue, or a folder of them; a folder
is split by file as above, a single file by example.
"""
import os

import numpy as np

from ..errors import BadFileError, MissingFileError, UsageError
from .readers import read_mo, read_pairs_tsv, read_po

LOCALE_ROOT = "/usr/share/locale"
MAX_CHARS = 60
NAME_LISTS = ("iso_",)      # iso-codes' lists of country, language and currency names
PAIR_SUFFIXES = (".tsv", ".txt", ".po", ".mo")
DATA = "a source<TAB>target .tsv, a .po or .mo catalogue, or a folder of them"


def read_pairs(path):
    """(source, target) pairs of one file, by its suffix."""
    low = path.lower()
    if low.endswith(".mo"):
        return list(read_mo(path).items())
    if low.endswith(".po"):
        return list(read_po(path).items())
    return read_pairs_tsv(path)


def catalogue_files(lang, root=LOCALE_ROOT):
    """The .mo catalogues of one language (no symlinks), sorted; MissingFileError when none."""
    folder = os.path.join(root, lang, "LC_MESSAGES")
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                   if f.endswith(".mo") and not f.startswith(NAME_LISTS)
                   and not os.path.islink(os.path.join(folder, f))) \
        if os.path.isdir(folder) else []
    if not files:
        raise MissingFileError(f"no message catalogues for --lang {lang}", folder,
                               f"{DATA} given with --data, or a --lang with catalogues here")
    return files


def _usable(source, target):
    return (0 < len(source) <= MAX_CHARS and "\n" not in source and "\n" not in target
            and any(c.isalpha() for c in source) and target.strip() != "")


def grouped_pairs(files, filter_pairs=True):
    """{file: [(source, target)]} de-duplicated by source over all files (first file wins);
    files left with no pairs are dropped. BadFileError when nothing is left."""
    seen, groups = set(), {}
    for f in files:
        kept = []
        for source, target in read_pairs(f):
            source, target = source.strip(), target.strip()
            if (filter_pairs and not _usable(source, target)) or source in seen:
                continue
            seen.add(source)
            kept.append((source, target))
        if kept:
            groups[f] = kept
    if not groups:
        where = files[0] if len(files) == 1 else os.path.dirname(files[0])
        raise BadFileError("no translated strings (empty catalogues, or none of one line of at "
                           f"most {MAX_CHARS} characters)", where, DATA)
    return groups


def split_by_group(groups, test_fraction, seed):
    """(train pairs, test pairs, test group names): whole groups go to the test split, in a
    seeded order, until it holds test_fraction of the pairs."""
    names = sorted(groups)
    total = sum(len(groups[n]) for n in names)
    order = np.random.default_rng(seed).permutation(len(names))
    test_names, n_test = [], 0
    for i in order:
        if n_test >= test_fraction * total or len(test_names) == len(names) - 1:
            break
        test_names.append(names[i])
        n_test += len(groups[names[i]])
    train = [p for n in names if n not in test_names for p in groups[n]]
    test = [p for n in sorted(test_names) for p in groups[n]]
    return train, test, sorted(test_names)


def translation_split(data, lang, test_fraction, seed):
    """(train, test, description) for the translate task."""
    if data is None:
        files = catalogue_files(lang)
        groups = grouped_pairs(files)
        train, test, names = split_by_group(groups, test_fraction, seed)
        desc = (f"{len(files)} catalogues in {os.path.dirname(files[0])}: {len(train) + len(test)}"
                f" distinct strings; held out: {len(names)} whole catalogues "
                f"({', '.join(os.path.basename(n) for n in names[:6])}"
                f"{', ...' if len(names) > 6 else ''})")
        return train, test, desc
    if os.path.isdir(data):
        files = sorted(os.path.join(data, f) for f in os.listdir(data)
                       if f.lower().endswith(PAIR_SUFFIXES) and
                       os.path.isfile(os.path.join(data, f)))
        if not files:
            raise MissingFileError("no .tsv, .po or .mo files in this folder", f"--data {data}",
                                   DATA)
        groups = grouped_pairs(files, filter_pairs=False)
        if len(groups) > 1:
            train, test, names = split_by_group(groups, test_fraction, seed)
            return train, test, f"{len(files)} files in {data}; held out: {len(names)} of them"
        pairs = next(iter(groups.values()))
    elif os.path.isfile(data):
        pairs = next(iter(grouped_pairs([data], filter_pairs=False).values()))
    else:
        raise MissingFileError("no such file or folder", f"--data {data}", DATA)
    if len(pairs) < 2:
        raise BadFileError(f"{len(pairs)} pair: nothing left to test on", f"--data {data}",
                           "at least two source<TAB>target pairs")
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_test = max(1, int(round(len(pairs) * test_fraction)))
    test = [pairs[i] for i in sorted(order[:n_test])]
    train = [pairs[i] for i in sorted(order[n_test:])]
    return train, test, f"{len(pairs)} pairs in {data}, split by example"


def check_fraction(test_fraction):
    if not 0.0 < test_fraction < 1.0:
        raise UsageError(f"{test_fraction} is outside (0, 1)", "--test-fraction",
                         "a number between 0 and 1 (exclusive)")
