"""instruct-museformer fairseq plugin: importing it registers the task, the architectures and the
criterions (anchored, scheduled sampling), and gives the Python API (``from museformer import Renderer``)."""
from . import criterion, model, scheduled_sampling, task  # noqa: F401
from .decoding import DecodeConfig  # noqa: F401
from .render import Performance, Renderer, RenderError, Sampling  # noqa: F401
