"""The compiled Riccati kernel (hope_attr/engine/native.py): references, agreement with the eager
loops, where it declines, and the loader under attack: planted, truncated, foreign, incomplete
files and hostile compilers never run foreign code, crash or stall a call."""

from __future__ import annotations

import hashlib
import importlib.machinery
import math
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.func import jvp

import hope_attr
from hope_attr import HOPEAttribution
from hope_attr.engine import native as _native
from hope_attr.engine.resources import resources
from hope_attr.engine.series import riccati_series

# (name, g, g', linear, quadratic): g' = a + linear g + quadratic g^2.
FUNCTIONS = [
    ("tanh", torch.tanh, lambda y: 1 - y * y, 0.0, -1.0),
    ("sigmoid", torch.sigmoid, lambda y: y - y * y, 1.0, -1.0),
    ("exp", torch.exp, lambda y: y, 1.0, 0.0),
]
STATUS = _native.status()
needs_kernel = pytest.mark.skipif(not STATUS.startswith("active"), reason=f"kernel {STATUS}")
COMPILER = next((found for name in ("cc", "gcc", "clang") if (found := shutil.which(name))), None)
needs_compiler = pytest.mark.skipif(COMPILER is None, reason="no C compiler to build test files")
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def _eager(y0, slope0, u, order, linear, quadratic) -> torch.Tensor:
    with resources(native_kernel=False):
        return riccati_series(y0, slope0, u, order, linear, quadratic).clone()


def _series_reference(g, x0: torch.Tensor, u: torch.Tensor, order: int) -> torch.Tensor:
    """Coefficients ``1..order`` of ``g(x0 + sum_j u_j t^j)`` by nested ``jvp`` in ``t``
    (float64; nothing of hope_attr). Nesting costs ``2^order``: order 8 takes 25 s."""

    def along(t: torch.Tensor) -> torch.Tensor:
        return g(x0 + sum(u[j] * t ** (j + 1) for j in range(u.shape[0])))

    def derivative(k: int):
        if k == 0:
            return along
        inner = derivative(k - 1)
        return lambda t: jvp(inner, (t,), (torch.ones_like(t),))[1]

    t0 = torch.zeros((), dtype=x0.dtype)
    return torch.stack([derivative(k)(t0) / math.factorial(k) for k in range(1, order + 1)])


def _unmixed_reference(model, x: torch.Tensor, order: int) -> torch.Tensor:
    """``d^k model(x)[b, o] / d x[b, i]^k`` by nested ``jvp`` along each feature, ``(k, B, O, I)``
    (the examples of a batch are independent, so one feature moves in all of them at once)."""
    columns = []
    for i in range(x.shape[1]):
        step = torch.zeros_like(x)
        step[:, i] = 1

        def derivative(k: int, step=step):
            if k == 0:
                return lambda t: model(x + t * step)
            inner = derivative(k - 1)
            return lambda t: jvp(inner, (t,), (torch.ones_like(t),))[1]

        t0 = torch.zeros((), dtype=x.dtype)
        columns.append(torch.stack([derivative(k)(t0) for k in range(1, order + 1)]))
    return torch.stack(columns, dim=-1)


def _tanh_model() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(3)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3), torch.nn.Sigmoid()
    )
    return model.double().eval(), torch.randn(4, 5, dtype=torch.float64)


def test_the_built_kernel_is_found_in_the_package_and_active() -> None:
    if not STATUS.startswith("active"):
        # The extension is optional, so a failed build still installs: CI, which has a compiler
        # and runs `pip install -e .`, must notice.
        if os.environ.get("CI") and COMPILER:
            pytest.fail(f"kernel {STATUS}")
        pytest.skip(f"kernel {STATUS}")
    # The file Python's import system finds beside native.py, nothing else.
    path = Path(STATUS.removeprefix("active (").removesuffix(")"))
    assert path.parent == Path(_native.__file__).parent
    assert path.name.startswith("_series_kernel.") and path.name.endswith(SUFFIX)
    assert _native.available() and _native.unavailable_reason() is None


@needs_kernel
@pytest.mark.parametrize("name, g, slope, linear, quadratic", FUNCTIONS)
@pytest.mark.parametrize("order, stored", [(1, 1), (4, 4), (6, 6), (6, 2)])
def test_kernel_matches_nested_jvp(name, g, slope, linear, quadratic, order, stored) -> None:
    generator = torch.Generator().manual_seed(order)
    x0 = torch.randn(3, 67, dtype=torch.float64, generator=generator)  # 201: not whole blocks
    u = 0.5 * torch.randn(stored, 3, 67, dtype=torch.float64, generator=generator)
    y0 = g(x0)
    out = torch.empty(order, 3, 67, dtype=torch.float64)
    assert _native.riccati(y0, slope(y0), u, out, linear, quadratic)
    expected = _series_reference(g, x0, u, order)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


@needs_kernel
@pytest.mark.parametrize("order", [12, 32])
def test_kernel_high_orders_in_closed_form(order) -> None:
    # exp(x0 + u1 t) has coefficients exp(x0) u1^k / k!: the highest orders the kernel takes.
    x0 = torch.linspace(-2, 2, 130, dtype=torch.float64)
    u1 = torch.linspace(-1.5, 1.5, 130, dtype=torch.float64)
    out = torch.empty(order, 130, dtype=torch.float64)
    assert _native.riccati(x0.exp(), x0.exp(), u1[None], out, 1.0, 0.0)
    k = torch.arange(1, order + 1, dtype=torch.float64)[:, None]
    expected = x0.exp() * u1**k / torch.exp(torch.lgamma(k + 1))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-300)


@needs_kernel
def test_kernel_tanh_is_twice_sigmoid_of_twice_the_argument() -> None:
    # tanh(z) = 2 sigmoid(2z) - 1 at order 12: two runs with different recurrence constants.
    generator = torch.Generator().manual_seed(12)
    x0 = torch.randn(4, 70, dtype=torch.float64, generator=generator)
    u = 0.3 * torch.randn(12, 4, 70, dtype=torch.float64, generator=generator)
    y, s = torch.tanh(x0), torch.sigmoid(2 * x0)
    tanh_series, sigmoid_series = torch.empty_like(u), torch.empty_like(u)
    assert _native.riccati(y, 1 - y * y, u, tanh_series, 0.0, -1.0)
    assert _native.riccati(s, s - s * s, 2 * u, sigmoid_series, 1.0, -1.0)
    torch.testing.assert_close(tanh_series, 2 * sigmoid_series, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name, g, slope, linear, quadratic", FUNCTIONS)
@pytest.mark.parametrize("order", [2, 6])
def test_eager_loops_match_nested_jvp(name, g, slope, linear, quadratic, order):
    # The path taken where the kernel is off has its own reference.
    generator = torch.Generator().manual_seed(order)
    x0 = torch.randn(2, 9, dtype=torch.float64, generator=generator)
    u = 0.5 * torch.randn(order, 2, 9, dtype=torch.float64, generator=generator)
    y0 = g(x0)
    got = _eager(y0, slope(y0), u, order, linear, quadratic)
    torch.testing.assert_close(got, _series_reference(g, x0, u, order), rtol=1e-10, atol=1e-12)


# (series shape, primal shape): the primal broadcast over leading axes (passed with a period),
# matching elementwise, and broadcast over an inner axis (expanded before the kernel).
SHAPES = [
    ((16, 4, 8, 7, 7), (4, 8, 7, 7)),
    ((16, 4, 8, 7, 7), (16, 4, 8, 7, 7)),
    ((300, 1, 64), (1, 64)),
    ((5, 3, 11), (5, 1, 11)),
    ((7,), ()),
]


@needs_kernel
@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 2e-6), (torch.float64, 1e-13)])
@pytest.mark.parametrize("shape, primal_shape", SHAPES)
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_agrees_with_eager_loops(shape, primal_shape, dtype, rtol, threads):
    generator = torch.Generator().manual_seed(len(shape))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for name, g, slope, linear, quadratic in FUNCTIONS:
            x0 = torch.randn(primal_shape, generator=generator).to(dtype)
            u = (0.4 * torch.randn(10, *shape, generator=generator)).to(dtype)
            y0 = g(x0)
            got = riccati_series(y0, slope(y0), u, 10, linear, quadratic)
            expected = _eager(y0, slope(y0), u, 10, linear, quadratic)
            # Per order, relative to that order's largest coefficient (the orders shrink fast).
            scale = expected.flatten(1).abs().amax(1).clamp_min(1e-30)
            error = (got - expected).flatten(1).abs().amax(1) / scale
            assert error.max() < rtol, (name, error)
    finally:
        torch.set_num_threads(previous)


@needs_kernel
def test_kernel_propagates_nan_and_inf_like_the_eager_loops() -> None:
    y0 = torch.tanh(torch.randn(4, 50))
    u = torch.randn(6, 4, 50)
    u[2, 1, 3] = float("nan")
    u[0, 2, 7] = float("inf")
    got = riccati_series(y0, 1 - y0 * y0, u, 6, 0.0, -1.0)
    expected = _eager(y0, 1 - y0 * y0, u, 6, 0.0, -1.0)
    assert torch.equal(got.isnan(), expected.isnan())
    assert torch.equal(got.isinf(), expected.isinf())
    finite = expected.isfinite()
    torch.testing.assert_close(got[finite], expected[finite])


def test_kernel_declines_what_it_does_not_cover() -> None:
    y0 = torch.tanh(torch.randn(3, 5))
    u = torch.randn(4, 3, 5)
    out = torch.empty(4, 3, 5)
    # Orders above 32, integer and half precision, series broadcast over an axis, gradients.
    assert not _native.riccati(y0, 1 - y0 * y0, u, torch.empty(33, 3, 5), 0.0, -1.0)
    assert not _native.riccati(y0.half(), y0.half(), u.half(), out.half(), 0.0, -1.0)
    assert not _native.riccati(y0, y0, u[:, :1], out, 0.0, -1.0)
    leaf = u.clone().requires_grad_()
    assert not _native.riccati(y0, 1 - y0 * y0, leaf, out, 0.0, -1.0)


def test_the_resource_policy_switches_the_kernel_off_without_opening_it(monkeypatch) -> None:
    def never(*_):
        raise AssertionError("the kernel file was looked for while the policy says off")

    monkeypatch.setattr(_native, "_state", {})
    monkeypatch.setattr(_native, "_locate", never)
    y0 = torch.tanh(torch.randn(3, 5))
    out = torch.full((4, 3, 5), -7.0)
    with resources(native_kernel=False):
        assert not _native.riccati(y0, 1 - y0 * y0, torch.randn(4, 3, 5), out, 0.0, -1.0)
        assert _native.status().startswith("off: switched off by the resource policy")
        assert not _native.available()
    assert torch.all(out == -7.0)  # declined means untouched


def test_an_unbuilt_kernel_leaves_the_same_attributions_to_the_torch_loops(monkeypatch) -> None:
    model, x = _tanh_model()
    expected = HOPEAttribution(model, order=8).attribute_all_targets(x)
    monkeypatch.setattr(_native, "_state", {})  # a process where the build had failed
    monkeypatch.setattr(_native, "_MODULE", "hope_attr.engine._no_such_kernel")
    with resources(native_kernel=True):  # allowed (whatever HOPE_ATTR_NATIVE says), not there
        assert _native.status().startswith("off: not built at install time")
        assert "pip install --force-reinstall --no-deps -e ." in _native.unavailable_reason()
        got = HOPEAttribution(model, order=8).attribute_all_targets(x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


# The child of the subprocess tests: an expansion in a fresh process, its result and the state
# of the kernel written out for the parent to judge.
CHILD = """
import sys, torch, hope_attr
from hope_attr.engine import native
model, x = torch.load(sys.argv[1], weights_only=False)
torch.save(hope_attr.unmixed_derivatives(model, x, order=4), sys.argv[2])
print(native.status())
"""


def _expand_in_child(tmp_path: Path, environment: dict[str, str]) -> tuple[str, float]:
    """Run :data:`CHILD` under ``environment``; check its derivatives against nested ``jvp``;
    return what it printed and its wall time."""
    model, x = _tanh_model()
    torch.save((model, x), tmp_path / "model.pt")
    started = time.monotonic()
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "model.pt"), str(tmp_path / "out.pt")],
        env=environment, capture_output=True, text=True, timeout=100, cwd=tmp_path,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert child.returncode == 0, child.stderr
    got = torch.load(tmp_path / "out.pt")
    torch.testing.assert_close(got, _unmixed_reference(model, x, 4), rtol=1e-9, atol=1e-11)
    return child.stdout.strip(), elapsed


def _build(tmp_path: Path, source: str, name: str) -> Path:
    (tmp_path / f"{name}.c").write_text(source)
    target = tmp_path / name
    subprocess.run([COMPILER, "-shared", "-fPIC", "-o", target, tmp_path / f"{name}.c"], check=True)
    return target


PLANTED = """
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
  FILE *marker = fopen(getenv("PLANTED_MARKER"), "w");
  if (marker) { fputs("foreign code ran", marker); fclose(marker); }
}
"""


def _old_cache_names(compiler: str) -> list[str]:
    """The file names hope_attr <= 0.2 looked up in its cache for this source: a hash of the
    source, the compiler and the flags (an attacker computes them the same way)."""
    source = b"".join(path.read_bytes() for path in Path(_native.__file__).parent.glob("*.c"))
    names = []
    for extra in ([], ["-mavx2", "-mfma"]):
        flags = ["-O3", "-std=gnu99", "-fPIC", "-shared", "-ffp-contract=off", *extra]
        key = hashlib.sha256(b"\0".join([source, compiler.encode(), *map(str.encode, flags)]))
        names.append(f"series-{key.hexdigest()[:16]}.so")
    return names


@needs_compiler
def test_a_library_planted_in_the_old_cache_folders_is_never_loaded(tmp_path) -> None:
    planted = _build(tmp_path, PLANTED, "planted.so")
    home, shared = tmp_path / "home", tmp_path / "shared-cache"
    for folder in (home / ".cache" / "hope_attr", shared):
        folder.mkdir(parents=True)
        for name in _old_cache_names(COMPILER):
            shutil.copy(planted, folder / name)
    marker = tmp_path / "marker"
    environment = {k: v for k, v in os.environ.items() if k not in ("CC", "XDG_CACHE_HOME")}
    environment.update(HOME=str(home), HOPE_ATTR_CACHE_DIR=str(shared), PLANTED_MARKER=str(marker))
    printed, _ = _expand_in_child(tmp_path, environment)
    assert not marker.exists(), "a planted library's constructor ran"
    assert printed == STATUS


@pytest.mark.parametrize("compiler", ["hangs", "false"])
def test_a_hostile_compiler_is_never_run(tmp_path, compiler) -> None:
    # Nothing compiles at run time: a $CC that hangs cannot stall a process, and one that
    # "succeeds" without output cannot switch the kernel off.
    if compiler == "hangs":
        script = tmp_path / "cc"
        script.write_text("#!/bin/sh\nsleep 1000\n")
        script.chmod(0o755)
        compiler = str(script)
    environment = dict(os.environ, CC=compiler, HOPE_ATTR_CACHE_DIR=str(tmp_path / "cache"))
    printed, elapsed = _expand_in_child(tmp_path, environment)
    assert printed == STATUS
    assert elapsed < 60  # the old loader waited 120 s for its compiler
    assert not (tmp_path / "cache").exists()


def _truncate_in_child(kernel: Path, tmp_path: Path) -> list[str]:
    """Offer the loader copies of ``kernel`` cut at several lengths, in a child process (a
    mapped truncated library kills its process with SIGBUS); the reasons it gave."""
    size = kernel.stat().st_size
    for length in (0, 10, 100, 4000, size // 2, size - 1):
        with open(kernel, "rb") as source, open(tmp_path / f"cut{length}{SUFFIX}", "wb") as cut:
            cut.write(source.read(length))
    script = (
        "import sys\nfrom pathlib import Path\nfrom hope_attr.engine import native\n"
        "for path in sorted(Path(sys.argv[1]).glob('cut*')):\n"
        "    try:\n        native._load(path, path.parent)\n        print('LOADED', path)\n"
        "    except native._Refused as error:\n        print(error)\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=100
    )
    assert child.returncode == 0, (child.returncode, child.stderr)  # -7 was SIGBUS
    return child.stdout.splitlines()


@needs_kernel
def test_a_truncated_kernel_is_refused_not_mapped(tmp_path) -> None:
    kernel = Path(STATUS.removeprefix("active (").removesuffix(")"))
    reasons = _truncate_in_child(kernel, tmp_path)
    assert len(reasons) == 6
    for reason in reasons:
        assert "is truncated" in reason or "is not an ELF shared library" in reason, reason


def _copy_of_kernel(tmp_path: Path) -> Path:
    kernel = Path(STATUS.removeprefix("active (").removesuffix(")"))
    copy = tmp_path / kernel.name
    shutil.copy(kernel, copy)
    return copy


def _other_users_file(path: Path, monkeypatch) -> None:
    if os.geteuid() == 0:
        os.chown(path, 65534, -1)  # nobody
        return
    real = os.fstat
    monkeypatch.setattr(_native.os, "fstat", lambda fd: _changed(real(fd), st_uid=os.geteuid() + 1))


def _changed(info: os.stat_result, **fields: int) -> os.stat_result:
    names = ["st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid", "st_size"]
    values = list(info[:10])
    for name, value in fields.items():
        values[names.index(name)] = value
    return os.stat_result(values)


@needs_kernel
@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX owners")
@pytest.mark.parametrize("case", ["other owner", "world-writable", "shared group", "link", "FIFO"])
def test_a_file_another_user_could_write_is_refused(tmp_path, monkeypatch, case) -> None:
    copy = _copy_of_kernel(tmp_path)
    expected = {"other owner": "neither you nor root", "link": "symbolic link", "FIFO": "regular"}
    if case == "other owner":
        _other_users_file(copy, monkeypatch)
    elif case == "world-writable":
        copy.chmod(0o757)
    elif case == "shared group":
        copy.chmod(0o775)
        if os.geteuid() == 0:
            os.chown(copy, -1, 65534)  # nogroup: not the owner's private group
        else:
            monkeypatch.setattr(_native, "_private_group", lambda gid, uid: False)
    elif case == "link":
        copy.rename(tmp_path / "elsewhere.so")
        copy.symlink_to(tmp_path / "elsewhere.so")
    else:
        copy.unlink()
        os.mkfifo(copy)  # opening a FIFO for reading would wait for a writer
    with pytest.raises(_native._Refused, match=expected.get(case, "writable by other users")):
        _native._load(copy, tmp_path)


def _own_private_group() -> bool:
    """Whether this user's primary group is theirs alone (Debian's user-private groups)."""
    import grp
    import pwd

    me = pwd.getpwuid(os.geteuid())
    group = grp.getgrgid(me.pw_gid)
    sharing = [user.pw_name for user in pwd.getpwall() if user.pw_gid == me.pw_gid]
    return group.gr_name == me.pw_name and set(group.gr_mem) | set(sharing) <= {me.pw_name}


@needs_kernel
@pytest.mark.skipif(
    not hasattr(os, "geteuid") or not _own_private_group(), reason="no user-private group"
)
def test_group_write_for_a_user_private_group_is_accepted(tmp_path) -> None:
    # A umask of 002 (Debian, Ubuntu) makes every installed file group-writable; where the group
    # is the owner's alone, nobody else can write, and the kernel must still load.
    import pwd

    copy = _copy_of_kernel(tmp_path)
    os.chown(copy, -1, pwd.getpwuid(os.geteuid()).pw_gid)  # the owner's own group
    copy.chmod(0o775)
    assert _native._load(copy, tmp_path) is not None


@needs_kernel
def test_a_file_outside_the_package_folder_is_refused(tmp_path) -> None:
    copy = _copy_of_kernel(tmp_path)
    with pytest.raises(_native._Refused, match="not in the package folder"):
        _native._load(copy, Path(_native.__file__).parent)
    assert _native._load(copy, tmp_path) is not None  # the same file, where it belongs, loads


INCOMPLETE = """
int hope_max_order(void) { return 32; }
int hope_kernel_abi(void) { return %d; }
void hope_riccati_float32(void) {}
%s
"""


@needs_compiler
@pytest.mark.parametrize(
    "abi, extra, reason",
    [(2, "", "lacks the symbol hope_riccati_float64"), (1, "void hope_riccati_float64(void) {}",
     "built from another version")],
)  # fmt: skip
def test_an_incomplete_or_stale_library_is_refused_once(tmp_path, monkeypatch, abi, extra, reason):
    library = _build(tmp_path, INCOMPLETE % (abi, extra), f"_series_kernel{SUFFIX}")
    looked = []
    monkeypatch.setattr(_native, "_state", {})
    monkeypatch.setattr(_native, "_locate", lambda: looked.append(1) or (library, tmp_path))
    model, x = _tanh_model()
    expected = _unmixed_reference(model, x, 4)
    with resources(native_kernel=True):
        for _ in range(2):  # float64: the missing kernel's dtype; no AttributeError, right numbers
            got = hope_attr.unmixed_derivatives(model, x, order=4)
            torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)
        assert looked == [1]  # decided once per process
        assert _native.status().startswith("off: failed validation") and reason in _native.status()


def _mach_o(length: int) -> bytes:
    """A 64-bit Mach-O dylib header with one segment covering ``length`` bytes (loader.h)."""
    header = struct.pack("<IiiIIIII", 0xFEEDFACF, 0x01000007, 3, 6, 1, 72, 0, 0)
    segment = struct.pack("<II16sQQQQiiII", 0x19, 72, b"__TEXT", 0, length, 0, length, 5, 5, 0, 0)
    return (header + segment).ljust(length, b"\0")


def _pe(length: int) -> bytes:
    """A PE DLL with one section of raw data ending at ``length`` (the PE/COFF specification)."""
    dos = b"MZ".ljust(0x3C, b"\0") + struct.pack("<I", 0x40)
    coff = b"PE\0\0" + struct.pack("<HHIIIHH", 0x8664, 1, 0, 0, 0, 0, 0x2000)
    section = struct.pack("<8sIIIIIIHHI", b".text", 512, 4096, length - 512, 512, 0, 0, 0, 0, 0)
    return (dos + coff + section).ljust(length, b"\0")


@pytest.mark.parametrize("kind, make", [("Mach-O", _mach_o), ("PE", _pe)])
def test_other_platforms_formats_are_checked_for_truncation(tmp_path, kind, make) -> None:
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.write_bytes(make(4096))
    cut.write_bytes(make(4096)[:4000])
    for path, complete in ((whole, True), (cut, False)):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            if complete:
                _native._check_complete(descriptor, 4096, path, kind)
            else:
                with pytest.raises(_native._Refused, match="truncated"):
                    _native._check_complete(descriptor, 4000, path, kind)
            with pytest.raises(_native._Refused, match="not an ELF"):
                _native._check_complete(descriptor, path.stat().st_size, path, "ELF")
        finally:
            os.close(descriptor)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_kernel_thread_pool_works_in_a_forked_child() -> None:
    # A forked child inherits the pool object but not its threads; hope_attr forgets the pool at
    # fork. (Torch itself needs one intra-op thread in such a child; the pool serves the kernel.)
    import multiprocessing

    assert _native._thread_pool(1).submit(int, "7").result() == 7  # the parent's pool runs
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_use_pool_in_child).get(timeout=60) == 7


def _use_pool_in_child() -> int:
    return _native._thread_pool(1).submit(int, "7").result(timeout=30)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_an_elements_result_does_not_depend_on_where_it_sits(dtype) -> None:
    # Chunks of directions put an element at another position of the kernel's blocks: its bits
    # must not change (internal_batch_size leaves results bit-identical).
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, dtype=dtype, generator=generator)
    u = torch.randn(10, 1, 5, dtype=dtype, generator=generator).expand(10, 70, 5).contiguous()
    y0 = torch.tanh(x0)
    out = torch.empty(10, 70, 5, dtype=dtype)
    assert _native.riccati(y0, 1 - y0 * y0, u, out, 0.0, -1.0)
    assert torch.equal(out, out[:, :1].expand_as(out))
