"""The wheels a lent GPU machine lacks, gathered here so that `bench/gpu_check.sh` runs there in one call.

    .venv/bin/python bench/gpu_wheels.py                       # cp312 wheels -> bench/gpu-wheels/ (carried)
    .venv/bin/python bench/gpu_wheels.py --python-version 3.11 --dest bench/gpu-wheels-cp311   # for the CPU dry run
    .venv/bin/python bench/gpu_wheels.py --check               # re-check a gathered folder (no downloads)
    .venv/bin/python bench/gpu_wheels.py fake-image DIR        # the dry run's stand-in for the image's packages

The GPU machine has no package index and its image already holds torch, transformers, peft, accelerate, triton and
about 200 more packages (IMAGE below, read off such a machine: /work/.library/device/KINDS.md). What travels is the
working tree plus `carry` paths, 64 MiB in all. So the folder gets:
  - every distribution in the closure of pyproject's runtime `dependencies` (markers read for CPython 3.12 on
    Linux x86_64) that the image lacks, at the version this checkout's venv runs and tests (`--no-deps`, one
    version of each: the install there is `pip install --no-deps --target`, no resolver);
  - the Hugging Face stack that tunelab pins private APIs of (OVER_IMAGE), at the tested versions, because the
    image's are older and an import-time break would waste the call; and any image package that a carried wheel
    bounds below its next major release (datasets' `fsspec<=2026.9.0`) while the image's version is unknown;
  - liger-kernel (training.kernels=auto on CUDA), bitsandbytes slimmed to its CUDA 13.0 and CPU libraries (3.4 MiB;
    the full wheel is 41 MiB of libraries for CUDA 11.8-13.2, ROCm and XPU; the image's torch is cu130);
  - tunelab itself, built from the checkout; `shared/` (the Alpaca demo data, the OpenLLaMA-3B config and the
    reference pipeline: ../shared does not travel); `cache/tiny/` (the cached tiny bases, so the GPU does not
    spend a minute pretraining them).
Then it checks every requirement of every carried wheel against the carried set plus the image (a `pip check`
computed here), that pip accepts every wheel for the target (CPython version, manylinux x86_64), and that the tree
plus the folder fit the 64 MiB budget, and writes manifest.json.
"""

from __future__ import annotations

import argparse
import email.parser
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "bench" / "gpu-wheels"
SHARED = Path(os.environ.get("TUNELAB_SHARED") or ROOT.parent / "shared")
# what one call takes: the working tree (tracked and untracked-not-ignored files) and the carried folder together
BUDGET = 64 * 2**20
MARGIN = 3 * 2**20  # room for what other work adds to the tree before the call

# The 'cuda' image of the lent H100 / H200 machines, package names as KINDS.md lists them (2026-11-17), with the
# versions a session's `pip list` there showed (None: present, version not read).
IMAGE_VERSIONS = {
    "accelerate": "1.15.0",
    "huggingface-hub": "1.33.0",
    "numpy": "2.5.2",
    "safetensors": "0.8.0",
    "sentencepiece": "0.2.2",
    "tokenizers": "0.23.2",
    "torch": "2.11.0",
    "transformers": "5.17.0",
    "triton": "3.6.0",
}
IMAGE_NAMES = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers
flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp""".split()
IMAGE = {canonicalize_name(n): IMAGE_VERSIONS.get(n) for n in IMAGE_NAMES}

# In the image, but carried at the tested version: tunelab pins their private APIs (tunelab/compat.py) and TRL
# follows transformers release by release; the image's transformers is 8 minors behind the venv's.
OVER_IMAGE = ["transformers", "huggingface-hub", "accelerate", "peft"]
# Not a dependency of tunelab, used by it on CUDA (training.kernels=auto); needs only torch and triton (image).
EXTRA = {"liger-kernel": "0.8.5"}
# bitsandbytes picks its library by torch.version.cuda; the image's torch is 2.11.0+cu130.
BNB_KEEP = re.compile(r"libbitsandbytes_(cuda130|cpu)\.so$")

PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)] + ["manylinux2014_x86_64"]


def target_env(python_version: str) -> dict:
    """The marker environment of the machine the wheels are for."""
    return {
        "python_version": python_version,
        "python_full_version": python_version + ".0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "os_name": "posix",
        "extra": "",
    }


def runtime_requirements() -> list[Requirement]:
    """pyproject's [project].dependencies (not the extras): what `pip install tunelab` needs."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def closure(roots: list[Requirement], env: dict) -> dict[str, tuple[str, str]]:
    """Every distribution the roots need, transitively, as {name: (installed version, who needs it)}, read from
    this venv's metadata (the versions tunelab is tested with here)."""
    seen: dict[str, tuple[str, str]] = {}
    todo = [(r, "tunelab") for r in roots]
    while todo:
        req, parent = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker and not req.marker.evaluate(env)):
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            sys.exit(f"gpu_wheels: {req.name} (needed by {parent}) is not installed in {sys.prefix}; run make setup")
        seen[name] = (dist.version, parent)
        todo += [(Requirement(r), name) for r in dist.requires or []]
    return seen


def narrowly_bounded(spec: SpecifierSet) -> bool:
    """An upper bound below the next major release (`<=2026.9.0`, `==1.2.3`, `<4.3`): an image package of unknown
    version may well be past it. A cap at a major release (`<13.0.0`, `==1.*`, `~=4.0`) is trusted."""
    for s in spec:
        if s.operator in ("<=", "==", "===") and not s.version.endswith(".*"):
            return True
        if s.operator == "<" and any(int(x) for x in Version(s.version).release[1:]):
            return True
    return False


def choose(env: dict) -> dict[str, dict]:
    """{name: {version, why}} of what to carry (tunelab itself aside)."""
    need = closure(runtime_requirements(), env)
    carry = {}
    for name, (version, parent) in need.items():
        if name == "torch" or name.startswith("nvidia-"):
            continue  # the image's CUDA build; a CPU or other CUDA torch must never shadow it
        if name not in IMAGE:
            carry[name] = {"version": version, "why": f"not in the image (needed by {parent})"}
        elif name in OVER_IMAGE:
            carry[name] = {"version": version, "why": f"image has {IMAGE[name] or 'another version'}; tested version"}
    for name in list(carry):  # image packages that a carried one bounds from above, the image's version unknown
        for req in requires_of(name, env):
            dep = canonicalize_name(req.name)
            if dep in IMAGE and dep not in carry and IMAGE[dep] is None and narrowly_bounded(req.specifier):
                carry[dep] = {"version": need[dep][0], "why": f"{name} needs {req}; the image's version is unknown"}
    for name, version in EXTRA.items():
        carry[name] = {"version": version, "why": "training.kernels=auto on CUDA"}
    return carry


def requires_of(name: str, env: dict) -> list[Requirement]:
    reqs = [Requirement(r) for r in md.requires(name) or []]
    return [r for r in reqs if not r.marker or r.marker.evaluate(env)]


def download(carry: dict[str, dict], dest: Path, python_version: str) -> None:
    """Binary wheels for the target; a release published only as a source archive (rouge-score) is built into a
    wheel here, which must come out pure Python (py3-none-any) to run there."""
    pins = [f"{n}=={c['version']}" for n, c in sorted(carry.items())]
    tags = ["--python-version", python_version, "--implementation", "cp"]
    for p in PLATFORMS:
        tags += ["--platform", p]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", *tags, "-d", str(dest)]
    while pins:
        r = subprocess.run([*cmd, *pins], capture_output=True, text=True)
        if r.returncode == 0:
            break
        missing = re.search(r"No matching distribution found for (\S+)", r.stderr)
        if not missing or missing.group(1) not in pins:
            sys.exit(f"gpu_wheels: pip download failed:\n{r.stderr[-2000:]}")
        pins.remove(missing.group(1))
        build_wheel(missing.group(1), dest)
    build_wheel(str(ROOT), dest)  # tunelab itself, from this checkout


def build_wheel(spec: str, dest: Path) -> None:
    before = set(dest.glob("*.whl"))
    # the checkout builds with this venv's setuptools; an sdist from the index in pip's own isolated environment
    isolation = ["--no-build-isolation"] if spec == str(ROOT) else []
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(dest), spec],
        capture_output=True,
        text=True,
    )
    built = set(dest.glob("*.whl")) - before
    if r.returncode != 0 or not built:
        sys.exit(f"gpu_wheels: no wheel for {spec}:\n{r.stderr[-2000:]}")
    impure = [w.name for w in built if not w.name.endswith("-none-any.whl")]
    if impure:
        sys.exit(f"gpu_wheels: {impure[0]} was built here but is not pure Python: it would not run on the GPU image")


def slim_bitsandbytes(dest: Path) -> None:
    """Rewrite the bitsandbytes wheel without the libraries the image's CUDA 13 torch never loads (and RECORD
    without their lines), to a temporary name first."""
    for wheel in dest.glob("bitsandbytes-*.whl"):
        tmp = wheel.with_suffix(".slim")
        with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
            names = src.namelist()
            if not any(re.search(r"libbitsandbytes_cuda1[12]", n) for n in names):
                tmp.unlink()
                return  # already slim
            keep = [n for n in names if not n.endswith(".so") or BNB_KEEP.search(n)]
            for n in keep:
                data = src.read(n)
                if n.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines()
                    data = ("\n".join(x for x in lines if x.split(",")[0] in keep) + "\n").encode()
                out.writestr(src.getinfo(n), data)
        tmp.replace(wheel)


def copy_shared(dest: Path) -> None:
    """The parts of ../shared the benchmarks read (small), and the tiny bases tunelab has cached here."""
    for part in ("data", "models", "reference"):
        if (SHARED / part).is_dir():
            shutil.copytree(SHARED / part, dest / "shared" / part, dirs_exist_ok=True)
        else:
            print(f"gpu_wheels: warning: no {SHARED / part}: the W3 and reference steps will fail on the GPU machine")
    from tunelab.cache import cache_root

    tiny = cache_root("tiny")
    for base in tiny.iterdir() if tiny.is_dir() else []:
        shutil.copytree(base, dest / "cache" / "tiny" / base.name, dirs_exist_ok=True)


def wheel_metadata(path: Path) -> email.message.Message:
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(z.read(meta).decode())


def unmet(dest: Path, env: dict) -> tuple[list[str], list[str]]:
    """pip check, computed here for the target machine: every requirement of every carried wheel against the
    carried versions, else the image's. Returns (problems, assumptions: image packages whose version is unknown)."""
    have: dict[str, str] = {}
    metas = {}
    for w in sorted(dest.glob("*.whl")):
        meta = wheel_metadata(w)
        name = canonicalize_name(meta["Name"])
        if name in have:
            return [f"two versions of {name} in {dest} (pip install --no-deps would install both)"], []
        have[name], metas[name] = meta["Version"], meta
    problems, assumed = [], set()
    for name, meta in metas.items():
        for line in meta.get_all("Requires-Dist") or []:
            req = Requirement(line)
            if req.marker and not req.marker.evaluate(env):
                continue
            dep = canonicalize_name(req.name)
            version = have.get(dep) or IMAGE.get(dep)
            if dep not in have and dep not in IMAGE:
                problems.append(f"{name} needs {req}: neither carried nor in the image")
            elif version is None:
                assumed.add(dep)
            elif not req.specifier.contains(Version(version), prereleases=True):
                problems.append(f"{name} needs {req}: {'carried' if dep in have else 'image has'} {version}")
    return problems, sorted(assumed)


def git_state() -> str:
    """HEAD's short hash, with `+changes` when the tree differs from it (what travels is the working tree)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], cwd=ROOT, capture_output=True, text=True)
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def travelling_tree_bytes() -> int:
    """What travels besides the carried folder: tracked files and untracked ones git does not ignore."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    paths = [ROOT / p for p in out.decode().split("\0") if p]
    return sum(p.stat().st_size for p in paths if p.is_file())


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def installable(dest: Path, python_version: str) -> list[str]:
    """What pip says against installing the folder's wheels on the target (tags, Python version); [] if nothing."""
    wheels = sorted(str(w) for w in dest.glob("*.whl"))
    if not wheels:
        return []
    tags = ["--python-version", python_version, "--implementation", "cp", "--only-binary=:all:"]
    for p in PLATFORMS:
        tags += ["--platform", p]
    with tempfile.TemporaryDirectory() as never:  # --dry-run writes nothing; --target lets the tags differ from here
        r = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--no-index", "--no-deps", "--target", never]
            + tags
            + wheels,
            capture_output=True,
            text=True,
        )
    return [] if r.returncode == 0 else [f"pip would not install them on the target: {r.stderr.strip()[-1500:]}"]


def check(dest: Path, python_version: str) -> int:
    env = target_env(python_version)
    problems, assumed = unmet(dest, env)
    problems += installable(dest, python_version)
    tree, bundle = travelling_tree_bytes(), folder_bytes(dest)
    mib = 2**20
    print(f"gpu_wheels: {dest}: {bundle / mib:.1f} MiB; the tree {tree / mib:.1f} MiB; budget {BUDGET / mib:.0f} MiB")
    if assumed:
        print(f"gpu_wheels: assumed adequate (in the image, version not known here): {', '.join(assumed)}")
    if tree + bundle > BUDGET - MARGIN:
        biggest = sorted(dest.glob("*.whl"), key=lambda p: -p.stat().st_size)[:3]
        problems.append(
            f"tree + {dest.name} = {(tree + bundle) / mib:.1f} MiB, over the {(BUDGET - MARGIN) / mib:.0f} MiB "
            f"budget (64 MiB less a margin); the biggest: "
            + ", ".join(f"{p.name} {p.stat().st_size / mib:.1f} MiB" for p in biggest)
        )
    for p in problems:
        print(f"gpu_wheels: PROBLEM: {p}")
    return 1 if problems else 0


def gather(dest: Path, python_version: str) -> int:
    env = target_env(python_version)
    carry = choose(env)
    staging = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        download(carry, staging, python_version)
        slim_bitsandbytes(staging)
        copy_shared(staging)
        wheels = {w.name: w.stat().st_size for w in sorted(staging.glob("*.whl"))}
        manifest = {
            "commit": git_state(),  # the device gets no .git: the check reports the commit from here
            "python_version": python_version,
            "carried": dict(sorted(carry.items())),
            "wheels": wheels,
            "wheel_bytes": sum(wheels.values()),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if dest.exists():
            shutil.rmtree(dest)  # only ever a folder this script made (it is its own ignored output)
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for name, size in wheels.items():
        print(f"{size / 2**20:7.2f} MiB  {name}")
    return check(dest, python_version)


def fake_image(target: Path) -> None:
    """The dry run's stand-in for the image: links to this venv's copies of the packages the image has (its
    torch is the CPU build), for a Python that has none of them."""
    import site

    src = Path(site.getsitepackages()[0])
    target.mkdir(parents=True, exist_ok=True)
    for dist in md.distributions(path=[str(src)]):
        name = canonicalize_name(dist.metadata["Name"])
        if name not in IMAGE:
            continue
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            link = target / top
            if (src / top).exists() and not link.exists() and top != "bin":
                link.symlink_to(src / top)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", nargs="?", default="gather", choices=["gather", "fake-image"])
    ap.add_argument("target", nargs="?", help="fake-image: the folder to fill")
    ap.add_argument("--dest", type=Path, default=DEST)
    ap.add_argument("--python-version", default="3.12", help="the GPU image's Python (3.12.3); 3.11 for a dry run here")
    ap.add_argument("--check", action="store_true", help="only check an existing folder (requirements, budget)")
    a = ap.parse_args()
    if a.action == "fake-image":
        if not a.target:
            ap.error("fake-image needs the folder to fill")
        fake_image(Path(a.target))
        return 0
    dest = a.dest.resolve()
    if a.check:
        if not dest.is_dir():
            ap.error(f"{dest} does not exist: run without --check first")
        return check(dest, a.python_version)
    return gather(dest, a.python_version)


if __name__ == "__main__":
    sys.exit(main())
