"""The architectures registered by name: each builds, the named variants keep their widths, and the one
meant for the released file fits the repository's 30 MB limit as fp16 weights."""
import argparse

import pytest
from fairseq.data import Dictionary
from fairseq.models import ARCH_MODEL_REGISTRY, ARCH_CONFIG_REGISTRY

from helpers import FakeTask
from instruct_tokenizer import vocab as V
from museformer.model import MuseformerS2PModel

RELEASE_LIMIT_BYTES = 30 * 1000 * 1000
NASAP_VOCAB = len(V.dictionary_tokens()) + 4  # a build's dict.txt plus fairseq's 4 specials


def nasap_sized_dict() -> Dictionary:
    d = Dictionary()
    d.add_symbol("Bar_None")
    while len(d) < NASAP_VOCAB:
        d.add_symbol(f"X_{len(d)}")
    return d


def build(arch: str):
    args = argparse.Namespace(share_all_embeddings=True, style_embed=True, align_source=True)
    ARCH_CONFIG_REGISTRY[arch](args)
    return args, MuseformerS2PModel.build_model(args, FakeTask(nasap_sized_dict()))


@pytest.mark.parametrize("arch,dim,layers", [("museformer_s2p_tiny", 128, 2), ("museformer_s2p_small", 256, 4),
                                             ("museformer_s2p", 512, 6)], ids=lambda p: str(p))
def test_registered_architectures_build_with_their_widths(arch, dim, layers):
    assert ARCH_MODEL_REGISTRY[arch] is MuseformerS2PModel
    args, model = build(arch)
    assert (args.encoder_embed_dim, args.decoder_embed_dim, args.encoder_layers, args.decoder_layers) == (dim, dim, layers, layers)
    assert len(model.encoder.layers) == len(model.decoder.layers) == layers


def test_small_fits_the_release_file_and_full_size_does_not():
    # the release writes every state-dict tensor (tied embeddings twice) in fp16: 2 bytes each
    size = {a: 2 * sum(t.numel() for t in build(a)[1].state_dict().values())
            for a in ("museformer_s2p_small", "museformer_s2p")}
    assert size["museformer_s2p_small"] < RELEASE_LIMIT_BYTES < size["museformer_s2p"]
