"""Presenting a benchmark run: Markdown tables (stdout and results/*.md) and the figure
(roofline of every kernel against the measured ceilings, and end-to-end tokens/s)."""
import math


def _num(v, fmt):
    return "—" if v is None else format(v, fmt)


def _name(r):
    return r["name"] + (f" [{r['label']}]" if r.get("label") else "")


def kernel_table(records, title):
    lines = [f"### {title}", "",
             "| kernel | pass | shape | ms | GB/s | TFLOP/s | bound | % of ceiling | torch ms | vs torch | check |",
             "|---|---|---|---:|---:|---:|---|---:|---:|---:|---|"]
    notes = []
    for r in records:
        shape = " ".join(f"{k}={v}" for k, v in r["shape"].items())
        check = ("—" if r.get("check_rel_err") is None else f"{r['check_rel_err']:.1e}")
        if r.get("skip"):
            notes.append(f"- {_name(r)} {r['pass']}: {r['skip']}")
            lines.append(f"| {_name(r)} | {r['pass']} | {shape} | skipped | | | | | "
                         f"{_num(r.get('torch_ms'), '.3f')} | | {check} |")
            continue
        speed = _num(r.get("speedup_vs_torch"), ".2f") + ("x" if r.get("speedup_vs_torch") else "")
        lines.append(f"| {_name(r)} | {r['pass']} | {shape} | {r['ms']:.3f} | {r['gbps']:.1f} | "
                     f"{r['tflops']:.3f} | {r['bound']} | {r['pct_of_ceiling']:.0f}% | "
                     f"{_num(r.get('torch_ms'), '.3f')} | {speed} | {check} |")
        if r.get("torch_skip"):
            notes.append(f"- {_name(r)} {r['pass']}: torch side failed: {r['torch_skip']}")
    if notes:
        lines += ["", "Not timed:", *_dedupe(notes)]
    return "\n".join(lines)


def _dedupe(lines):
    seen, out = set(), []
    for line in lines:
        if line not in seen:
            seen.add(line)
            out.append(line)
    return out


def ceilings_table(c, title):
    bf16 = (f"{c['bf16_gemm_tflops']:.1f} TFLOP/s" if c.get("bf16_gemm_tflops")
            else f"— ({c.get('bf16_gemm_reason', 'not measured')})")
    return (f"### {title}\n\ncopy {c['copy_gbps']:.1f} GB/s (read + written) · "
            f"fp32 GEMM {c['sgemm_tflops']:.3f} TFLOP/s · bf16 GEMM {bf16}")


def end_to_end_table(e, rows, title):
    """rows: (label, key prefix) for the models measured in e (prefix_tokens_per_s ...)."""
    lines = [f"### {title}", "", "| model | tokens/s | ms/step | MFU | note |", "|---|---:|---:|---:|---|"]
    for label, prefix in rows:
        tps = e.get(f"{prefix}_tokens_per_s")
        mfu = e.get(f"{prefix}_mfu")
        note = e.get(f"{prefix}_reason") or ""
        lines.append(f"| {label} | {_num(tps, ',.0f')} | {_num(e.get(prefix + '_ms_per_step'), '.1f')} | "
                     f"{'—' if mfu is None else f'{100 * mfu:.1f}%'} | {note} |")
    return "\n".join(lines)


CPU_E2E_ROWS = (("scratchgpt numpy", "numpy"), ("PyTorch CPU eager", "torch"))
GPU_E2E_ROWS = (("scratchgpt cuda", "cuda"), ("PyTorch eager (fused AdamW)", "torch_cuda"),
                ("PyTorch torch.compile", "torch_compile"),
                ("scratchgpt cuda, bf16", "cuda_bf16"),
                ("PyTorch eager, bf16 autocast", "torch_cuda_bf16"),
                ("PyTorch torch.compile, bf16 autocast", "torch_compile_bf16"))


# -------------------------------------------------------------------------------- figure
def plot(section, records, path, title, e2e_rows):
    """Roofline (arithmetic intensity vs achieved FLOP/s, every timed kernel a point, the
    measured ceilings as lines) beside a bar chart of end-to-end training tokens/s."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(15, 6), gridspec_kw={"width_ratios": [3, 2], "wspace": 0.55})
    c = section["ceilings"]
    timed = [r for r in records if r.get("ms")]
    bw, peak = c["copy_gbps"] * 1e9, c["sgemm_tflops"] * 1e12
    intens = [r["flops"] / r["bytes"] for r in timed] or [1.0]
    lo = 10 ** math.floor(math.log10(min(intens + [0.1])))
    hi = 10 ** math.ceil(math.log10(max(intens + [10 * peak / bw])))
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    ax.plot(xs, [min(x * bw, peak) / 1e12 for x in xs], "k-", lw=2,
            label=f"copy {c['copy_gbps']:.0f} GB/s / fp32 GEMM {c['sgemm_tflops']:.2f} TFLOP/s")
    if c.get("bf16_gemm_tflops"):
        b16 = c["bf16_gemm_tflops"] * 1e12
        ax.plot(xs, [min(x * bw, b16) / 1e12 for x in xs], "k--", lw=1,
                label=f"bf16 GEMM {c['bf16_gemm_tflops']:.0f} TFLOP/s")
    ops = sorted({r["name"] for r in timed})
    cmap = plt.get_cmap("tab10")
    markers = {"forward": "o", "backward": "s", "update": "D"}
    for i, op in enumerate(ops):
        for p, m in markers.items():
            pts = [r for r in timed if r["name"] == op and r["pass"] == p]
            if pts:
                ax.scatter([r["flops"] / r["bytes"] for r in pts], [r["tflops"] for r in pts],
                           color=cmap(i % 10), marker=m, s=40, edgecolor="k", lw=0.5, zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("achieved TFLOP/s")
    ax.set_title(f"{title}: kernels vs measured ceilings", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    # three small legends: the ceilings inside, the ops (colour) and passes (marker) outside
    from matplotlib.lines import Line2D
    ax.add_artist(ax.legend(fontsize=8, loc="upper left"))
    op_handles = [Line2D([], [], ls="", marker="o", color=cmap(i % 10), markeredgecolor="k", label=op)
                  for i, op in enumerate(ops)]
    pass_handles = [Line2D([], [], ls="", marker=m, color="w", markeredgecolor="k", label=p)
                    for p, m in markers.items() if any(r["pass"] == p for r in timed)]
    ax.add_artist(ax.legend(handles=op_handles, fontsize=8, title="kernel", title_fontsize=8,
                            loc="upper left", bbox_to_anchor=(1.01, 1.0)))
    ax.legend(handles=pass_handles, fontsize=8, title="pass", title_fontsize=8,
              loc="lower left", bbox_to_anchor=(1.01, 0.0))

    e = section.get("end_to_end") or {}
    labels = [label for label, prefix in e2e_rows if e.get(f"{prefix}_tokens_per_s")]
    values = [e[f"{prefix}_tokens_per_s"] for label, prefix in e2e_rows if e.get(f"{prefix}_tokens_per_s")]
    bars = bx.barh(labels[::-1], values[::-1], color=[cmap(i) for i in range(len(values))][::-1])
    for bar, v in zip(bars, values[::-1]):
        bx.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:,.0f}", va="center", fontsize=9)
    bx.set_xlabel("training tokens/s (forward + backward + AdamW)")
    shape = f"B={e.get('batch')} T={e.get('seq')} {e.get('dtype', '')}"
    threads = e.get("threads")
    bx.set_title(f"end to end, {shape}" + (f", {threads} thread{'s' if threads > 1 else ''}"
                                           if threads else ""), fontsize=10)
    if values:
        bx.set_xlim(0, max(values) * 1.25)
    else:
        bx.text(0.5, 0.5, "not measured", ha="center", transform=bx.transAxes)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
