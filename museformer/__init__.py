"""instruct-museformer fairseq plugin: importing it registers the task and the architectures."""
from . import model, task  # noqa: F401
