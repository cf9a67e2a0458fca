"""Encoder-decoder Museformer: FC-attention over bars, for score -> performance translation.

The network only: the encoder (``encoder.py``), the decoder (``decoder.py``), their embeddings and
attention layout (``embeddings.py``) and warm-start helpers (``warmstart.py``); here the registered
model, its flags and its architectures. Decode-time rules live in ``museformer.decoding``.
"""
from __future__ import annotations

import importlib
from typing import List, Optional

from fairseq.models import FairseqEncoderDecoderModel, register_model, register_model_architecture
from torch import nn

from .constants import BAR_TOKEN
from .decoder import MuseformerDecoder
from .decoding import DecodeRules
from .decoding.rules import uses_relative_tempo
from .encoder import MuseformerEncoder, SlotAnchors
from .warmstart import parse_types, train_only_rows


@register_model("museformer_s2p")
class MuseformerS2PModel(FairseqEncoderDecoderModel):
    """Score -> performance encoder-decoder with fine/coarse bar attention."""

    @staticmethod
    def add_args(parser):
        # fmt: off
        parser.add_argument("--encoder-layers", type=int, metavar="N", help="number of encoder layers")
        parser.add_argument("--decoder-layers", type=int, metavar="N", help="number of decoder layers")
        parser.add_argument("--encoder-embed-dim", type=int, metavar="N", help="encoder width")
        parser.add_argument("--decoder-embed-dim", type=int, metavar="N", help="decoder width")
        parser.add_argument("--encoder-ffn-embed-dim", type=int, metavar="N", help="encoder FFN width")
        parser.add_argument("--decoder-ffn-embed-dim", type=int, metavar="N", help="decoder FFN width")
        parser.add_argument("--encoder-attention-heads", type=int, metavar="N", help="encoder heads")
        parser.add_argument("--decoder-attention-heads", type=int, metavar="N", help="decoder heads")
        parser.add_argument("--dropout", type=float, metavar="D", help="dropout probability")
        parser.add_argument("--attention-dropout", type=float, metavar="D", help="dropout on attention weights")
        parser.add_argument("--activation-dropout", type=float, metavar="D", help="dropout after the FFN activation")
        parser.add_argument("--fine-bars", type=str, metavar="LIST",
                            help="decoder fine-grained bar offsets, e.g. 0,1,2,4,8,12,16,24,32 (must include 0)")
        parser.add_argument("--encoder-fine-window", type=int, metavar="N",
                            help="encoder: attend finely to bars within +-N, coarsely (summaries) beyond")
        parser.add_argument("--cross-window", type=int, metavar="N",
                            help="cross-attention: decoder bar b reads encoder bars b-N..b+N finely")
        parser.add_argument("--summary-tokens", type=int, metavar="N", help="summary positions per bar")
        parser.add_argument("--max-bars", type=int, metavar="N", help="size of the bar embedding table")
        parser.add_argument("--attention-impl", choices=["dense", "bar", "flex"],
                            help="attention backend: dense (reference), bar (gathered blocks), flex (GPU)")
        parser.add_argument("--share-all-embeddings", action="store_true",
                            help="share encoder/decoder input and output embeddings (needs a joined dictionary)")
        parser.add_argument("--share-decoder-input-output-embed", action="store_true",
                            help="share decoder input and output embeddings")
        parser.add_argument("--style-embed", action="store_true",
                            help="add a projection of the source prefix (instruct levels, composer, performer) "
                                 "to every encoder and decoder position, so that every bar sees the style")
        parser.add_argument("--decoder-input-dropout", type=float, metavar="D",
                            help="in training, replace previous performance tokens (not bar tokens) by <unk> "
                                 "with this probability (exposure bias: less copying of the model's own history)")
        parser.add_argument("--align-source", action="store_true",
                            help="add to every decoder position a projection of the encoder output at the "
                                 "score token its performance slot belongs to (needs the task's --grammar)")
        parser.add_argument("--train-rows", type=str, metavar="TYPES",
                            help="fine-tune only the token embedding rows of these token types (comma-separated, "
                                 "e.g. QPM,Tempo) and freeze every other parameter, so that a warm-started model "
                                 "learns what those rows carry without moving the rest (needs --weight-decay 0)")
        # fmt: on

    @classmethod
    def build_model(cls, args, task):
        base_architecture(args)
        args.fine_bars_list = cls.parse_fine_bars(args.fine_bars)
        cls.check_args(args, task)
        encoder_embed = cls.build_embedding(task.source_dictionary, args.encoder_embed_dim)
        if args.share_all_embeddings:
            decoder_embed = encoder_embed
            args.share_decoder_input_output_embed = True
        else:
            decoder_embed = cls.build_embedding(task.target_dictionary, args.decoder_embed_dim)
        encoder = MuseformerEncoder(args, task.source_dictionary, encoder_embed)
        decoder = MuseformerDecoder(args, task.target_dictionary, decoder_embed)
        if args.align_source:
            encoder.anchors = cls.build_anchors(args, task.source_dictionary)
        model = cls(encoder, decoder)
        if args.train_rows:
            train_only_rows(model, task.target_dictionary, parse_types(args.train_rows))
        return model

    @staticmethod
    def build_anchors(args, src_dict) -> SlotAnchors:
        """Slot anchors from the task's ``--grammar`` module (its ``target_slots``); a dictionary of the
        relative tempo encoding adds its one ``TempoLevel`` slot first (``uses_relative_tempo``)."""
        name = getattr(args, "grammar", None) or "instruct_tokenizer.grammar"
        module = importlib.import_module(name)
        return SlotAnchors(src_dict, module.target_slots, lead_slots=int(uses_relative_tempo(module, src_dict)))

    @staticmethod
    def parse_fine_bars(text: str) -> List[int]:
        try:
            bars = sorted({int(x) for x in str(text).split(",") if x.strip()})
        except ValueError:
            raise ValueError(f"--fine-bars: expected comma-separated integers, got {text!r}") from None
        return bars

    @staticmethod
    def check_args(args, task) -> None:
        if 0 not in args.fine_bars_list or min(args.fine_bars_list) < 0:
            raise ValueError("--fine-bars must include 0 (a bar's own tokens) and no negative offsets")
        if args.encoder_embed_dim != args.decoder_embed_dim:
            raise ValueError("--encoder-embed-dim and --decoder-embed-dim must be equal (cross-attention)")
        if args.share_all_embeddings and task.source_dictionary != task.target_dictionary:
            raise ValueError("--share-all-embeddings needs the same --srcdict and --tgtdict")
        if args.summary_tokens < 1:
            raise ValueError("--summary-tokens must be >= 1")
        if args.encoder_fine_window < 0 or args.cross_window < 0:
            raise ValueError("--encoder-fine-window and --cross-window must be >= 0")
        if args.attention_impl not in ("dense", "bar", "flex"):
            raise ValueError(f"--attention-impl must be dense, bar or flex, not {args.attention_impl!r}")
        if not 0.0 <= args.decoder_input_dropout < 1.0:
            raise ValueError("--decoder-input-dropout must be in [0, 1)")
        if args.attention_impl == "flex" and args.attention_dropout > 0:
            raise ValueError("--attention-impl flex has no attention dropout: use --attention-dropout 0")
        if args.train_rows and getattr(args, "weight_decay", 0.0) > 0:
            raise ValueError("--train-rows needs --weight-decay 0 (decay would move the frozen rows)")
        if args.train_rows and not args.share_all_embeddings:
            raise ValueError("--train-rows needs --share-all-embeddings (one token table for the rows to train)")
        for d in (task.source_dictionary, task.target_dictionary):
            if d.index(BAR_TOKEN) == d.unk():
                raise ValueError(f"the dictionary has no {BAR_TOKEN!r} token: not a bar-structured corpus")

    @classmethod
    def build_embedding(cls, dictionary, dim: int) -> nn.Embedding:
        emb = nn.Embedding(len(dictionary), dim, padding_idx=dictionary.pad())
        nn.init.normal_(emb.weight, mean=0, std=dim ** -0.5)
        nn.init.constant_(emb.weight[dictionary.pad()], 0)
        return emb

    def enable_decoding(self, rules: Optional[DecodeRules]) -> None:
        """Constrained generation: the encoder prepares the rules' per-slot tables from the score, the
        decoder applies the rules to every step's logits (None: unconstrained)."""
        self.encoder.rules = rules
        self.decoder.rules = rules


@register_model_architecture("museformer_s2p", "museformer_s2p")
def base_architecture(args):
    args.encoder_layers = getattr(args, "encoder_layers", 6)
    args.decoder_layers = getattr(args, "decoder_layers", 6)
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 512)
    args.decoder_embed_dim = getattr(args, "decoder_embed_dim", args.encoder_embed_dim)
    args.encoder_ffn_embed_dim = getattr(args, "encoder_ffn_embed_dim", 2048)
    args.decoder_ffn_embed_dim = getattr(args, "decoder_ffn_embed_dim", args.encoder_ffn_embed_dim)
    args.encoder_attention_heads = getattr(args, "encoder_attention_heads", 8)
    args.decoder_attention_heads = getattr(args, "decoder_attention_heads", 8)
    args.dropout = getattr(args, "dropout", 0.1)
    args.attention_dropout = getattr(args, "attention_dropout", 0.0)
    args.activation_dropout = getattr(args, "activation_dropout", 0.0)
    args.fine_bars = getattr(args, "fine_bars", "0,1,2,4,8,12,16,24,32")
    args.encoder_fine_window = getattr(args, "encoder_fine_window", 2)
    args.cross_window = getattr(args, "cross_window", 2)
    args.summary_tokens = getattr(args, "summary_tokens", 1)
    args.max_bars = getattr(args, "max_bars", 2048)
    args.attention_impl = getattr(args, "attention_impl", "dense")
    args.share_all_embeddings = getattr(args, "share_all_embeddings", False)
    args.share_decoder_input_output_embed = getattr(args, "share_decoder_input_output_embed", False)
    args.style_embed = getattr(args, "style_embed", False)
    args.align_source = getattr(args, "align_source", False)
    args.decoder_input_dropout = getattr(args, "decoder_input_dropout", 0.0)
    args.train_rows = getattr(args, "train_rows", None)
    args.max_source_positions = getattr(args, "max_source_positions", 100000)
    args.max_target_positions = getattr(args, "max_target_positions", 100000)


@register_model_architecture("museformer_s2p", "museformer_s2p_tiny")
def museformer_s2p_tiny(args):
    args.encoder_layers = getattr(args, "encoder_layers", 2)
    args.decoder_layers = getattr(args, "decoder_layers", 2)
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 128)
    args.encoder_ffn_embed_dim = getattr(args, "encoder_ffn_embed_dim", 512)
    args.encoder_attention_heads = getattr(args, "encoder_attention_heads", 4)
    args.decoder_attention_heads = getattr(args, "decoder_attention_heads", 4)
    args.dropout = getattr(args, "dropout", 0.1)
    base_architecture(args)


@register_model_architecture("museformer_s2p", "museformer_s2p_small")
def museformer_s2p_small(args):
    """9.6 M parameters with the (n)ASAP dictionary: a 22.5 MB released fp16 file (the repository holds at
    most 30 MB); four epochs of (n)ASAP in 5 minutes on one H100 (docs/attention.md)."""
    args.encoder_layers = getattr(args, "encoder_layers", 4)
    args.decoder_layers = getattr(args, "decoder_layers", 4)
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 256)
    args.encoder_ffn_embed_dim = getattr(args, "encoder_ffn_embed_dim", 1024)
    args.encoder_attention_heads = getattr(args, "encoder_attention_heads", 8)
    args.decoder_attention_heads = getattr(args, "decoder_attention_heads", 8)
    base_architecture(args)
