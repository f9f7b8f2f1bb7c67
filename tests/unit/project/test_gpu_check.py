"""The GPU check is prepared here and run on a lent machine in one call, so what can be checked without a GPU is:
the wheel folder's requirement check and budget (bench/gpu_wheels.py), the bitsandbytes slimming, the script's
argument parsing, and that docs/performance.md gives the device call the script's header gives."""

import importlib.util
import re
import subprocess
import zipfile

import pytest
from packaging.specifiers import SpecifierSet

from conftest import ROOT

SCRIPT = ROOT / "bench" / "gpu_check.sh"


def wheels_module():
    spec = importlib.util.spec_from_file_location("bench_gpu_wheels", ROOT / "bench" / "gpu_wheels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gw = wheels_module()


def fake_wheel(folder, name, version, requires=(), files=(), tag="py3-none-any"):
    """A wheel with only what the checks read: METADATA (name, version, Requires-Dist), WHEEL, RECORD and `files`."""
    path = folder / f"{name}-{version}-{tag}.whl"
    info = f"{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{info}/METADATA", meta)
        z.writestr(f"{info}/WHEEL", f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n")
        for f in files:
            z.writestr(f, b"x" * 10)
        listed = [f"{info}/METADATA", f"{info}/WHEEL", *files]
        z.writestr(f"{info}/RECORD", "".join(f"{f},sha256=x,10\n" for f in listed))
    return path


@pytest.mark.parametrize(
    "spec, narrow",
    [
        ("<=2026.9.0,>=2023.1.0", True),
        ("==1.2.3", True),
        ("<4.3", True),
        ("<13.0.0", False),
        ("==1.*", False),
        ("~=4.0", False),
        (">=8.4.2,<9.0.0", False),
        (">=1.0", False),
    ],
)
def test_only_bounds_below_the_next_major_release_make_an_image_package_travel(spec, narrow):
    assert gw.narrowly_bounded(SpecifierSet(spec)) is narrow


def test_every_runtime_dependency_is_carried_or_in_the_image():
    carried = gw.choose(gw.target_env("3.12"))
    for req in gw.runtime_requirements():
        name = gw.canonicalize_name(req.name)
        assert name in carried or name in gw.IMAGE, f"{name}: neither carried to the GPU machine nor in its image"
    assert "torch" not in carried, "a torch wheel from here would shadow the image's CUDA build"
    assert set(gw.OVER_IMAGE) <= set(carried)


def test_the_requirement_check_names_what_the_gpu_machine_would_lack(tmp_path):
    env = gw.target_env("3.12")
    fake_wheel(tmp_path, "alpha", "1.0", ["beta>=2", "transformers>=9", "numpy>=1", "nowhere-to-be-found"])
    fake_wheel(tmp_path, "beta", "2.1", ["unknownpkg; python_version < '3.0'"])
    problems, assumed = gw.unmet(tmp_path, env)
    assert any("nowhere-to-be-found" in p and "neither carried nor in the image" in p for p in problems)
    assert any("transformers>=9" in p and "image has 5.17.0" in p for p in problems)
    assert not any("beta" in p or "numpy" in p for p in problems)  # carried / image version fits / marker false
    fake_wheel(tmp_path, "beta", "2.2")
    problems, _ = gw.unmet(tmp_path, env)
    assert problems == [f"two versions of beta in {tmp_path} (pip install --no-deps would install both)"]


def test_the_budget_check_fails_a_folder_that_would_not_travel(tmp_path, monkeypatch, capsys):
    fake_wheel(tmp_path, "alpha", "1.0")
    assert gw.check(tmp_path, "3.12") == 0
    monkeypatch.setattr(gw, "BUDGET", gw.MARGIN + 1000)
    assert gw.check(tmp_path, "3.12") == 1
    assert "over the" in capsys.readouterr().out


def test_a_wheel_built_for_another_python_fails_the_check(tmp_path, capsys):
    fake_wheel(tmp_path, "alpha", "1.0", tag="cp311-cp311-manylinux_2_17_x86_64")
    assert gw.check(tmp_path, "3.11") == 0
    assert gw.check(tmp_path, "3.12") == 1
    assert "is not a supported wheel" in capsys.readouterr().out


def test_bitsandbytes_keeps_only_the_libraries_the_image_loads(tmp_path):
    libs = [f"bitsandbytes/libbitsandbytes_{x}.so" for x in ("cuda118", "cuda128", "cuda130", "cuda132", "cpu")]
    fake_wheel(tmp_path, "bitsandbytes", "0.50.2", files=["bitsandbytes/__init__.py", *libs])
    gw.slim_bitsandbytes(tmp_path)
    (wheel,) = tmp_path.glob("bitsandbytes-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(n for n in names if n.endswith(".so")) == sorted([libs[2], libs[4]])
    record = zipfile.ZipFile(wheel).read("bitsandbytes-0.50.2.dist-info/RECORD").decode()
    assert "cuda118" not in record and "cuda130" in record and "__init__.py" in record
    assert list(tmp_path.iterdir()) == [wheel]  # no staging file left behind


def test_gpu_check_refuses_unknown_arguments_and_a_dry_run_without_its_wheels(tmp_path):
    r = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "usage" in r.stderr
    r = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "GPU_WHEELS": str(tmp_path / "none")},
    )
    assert r.returncode == 2 and "gpu_wheels.py --python-version 3.11" in r.stderr


def device_call(text: str) -> tuple[str, str, str]:
    """(command, carry, timeout_s) as written in `command:` / `carry:` / `timeout_s:` lines."""
    found = [re.search(rf"{key}:\s*`?([^`\n]+?)`?\s*$", text, re.M) for key in ("command", "carry", "timeout_s")]
    assert all(found), "the device call (command, carry, timeout_s) is not written out"
    return tuple(m.group(1).strip() for m in found)


def test_the_docs_give_the_device_call_the_script_gives():
    script = device_call(SCRIPT.read_text())
    docs = (ROOT / "docs" / "performance.md").read_text()
    section = docs[docs.index("### First GPU run") :]
    assert device_call(section) == script == ("bash bench/gpu_check.sh", '["bench/gpu-wheels"]', "600")
