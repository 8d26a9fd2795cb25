// core/kernel.h — the one header a kernel source (csrc/*.cu) includes.
#pragma once

#include "errors.h"
#include "launch.h"
#include "platform.h"
#include "reduce.h"
#include "tensor.h"
#include "vec.h"
