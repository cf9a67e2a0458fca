"""scripts/interpolate_checkpoints.py: (1 - w) A + w B in weight space, as a released-format file that
renders; two checkpoints that do not fit together are one error line naming the file, and no output."""
import argparse
import sys

import pytest
import torch

from conftest import REPO
from museformer.render import DEFAULT_CHECKPOINT, Renderer

sys.path.insert(0, str(REPO / "scripts"))
import interpolate_checkpoints as ic  # noqa: E402

pytestmark = pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="needs the released model")


def load(path):
    with torch.serialization.safe_globals([argparse.Namespace]):  # the only allowlisted global
        return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The released model (A) and a copy with every float weight shifted by a per-tensor constant (B)."""
    root = tmp_path_factory.mktemp("interp")
    state = load(DEFAULT_CHECKPOINT)
    shifted = dict(state)
    shifted["model"] = {k: (v.float() + 0.25).half() if v.is_floating_point() else v for k, v in state["model"].items()}
    b = root / "b.pt"
    torch.save(shifted, b)
    return root, state, shifted, b


def run(argv, capsys):
    code = ic.main([str(a) for a in argv])
    return code, capsys.readouterr()


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_weights_are_the_blend(pair, capsys, weight):
    root, a, b, b_path = pair
    out = root / f"w{weight}.pt"
    code, _ = run([DEFAULT_CHECKPOINT, b_path, "--weight", weight, "-o", out], capsys)
    assert code == 0
    got = load(out)
    assert got["dictionary"] == a["dictionary"] and got["interpolation"]["weight"] == weight
    for name, va in a["model"].items():
        if not va.is_floating_point():
            assert torch.equal(got["model"][name], va)
            continue
        expected = ((1 - weight) * va.float() + weight * b["model"][name].float()).half()
        assert got["model"][name].dtype == torch.float16 and torch.equal(got["model"][name], expected)
    if weight == 0.0:
        assert all(torch.equal(got["model"][k], v) for k, v in a["model"].items())


def test_blend_renders(pair, capsys):
    root, _, _, b_path = pair
    out = root / "half.pt"
    assert run([DEFAULT_CHECKPOINT, b_path, "-w", "0.5", "-o", out], capsys)[0] == 0
    renderer = Renderer.load(checkpoint=str(out))
    assert renderer.models[0].decoder.out.weight.shape[0] == len(renderer.tgt_dict)


def test_mismatched_shapes_are_one_error_line(pair, capsys):
    root, _, b, _ = pair
    bad = dict(b)
    bad["model"] = dict(b["model"])
    name = next(k for k, v in bad["model"].items() if v.dim() == 2)
    bad["model"][name] = bad["model"][name][:-1]
    path = root / "bad.pt"
    torch.save(bad, path)
    out = root / "never.pt"
    code, cap = run([DEFAULT_CHECKPOINT, path, "-w", "0.5", "-o", out], capsys)
    lines = cap.err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and str(path) in lines[0] and name in lines[0] and "Traceback" not in cap.err
    assert not out.exists() and not (root / "never.pt.part").exists()


def test_other_dictionary_refused(pair, capsys):
    root, _, b, _ = pair
    other = dict(b)
    other["dictionary"] = b["dictionary"] + "Extra_1 1\n"
    path = root / "other.pt"
    torch.save(other, path)
    code, cap = run([DEFAULT_CHECKPOINT, path, "-w", "0.5", "-o", root / "x.pt"], capsys)
    assert code == 1 and "dictionary differs" in cap.err and str(path) in cap.err


def test_weight_outside_0_1(pair):
    root, _, _, b_path = pair
    with pytest.raises(SystemExit):
        ic.main([str(DEFAULT_CHECKPOINT), str(b_path), "-w", "1.5", "-o", str(root / "y.pt")])
