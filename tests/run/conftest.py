"""The tiny CPU recipe and teacher of the training tests, shared with the run tests."""

from train.conftest import teacher_dir, tiny_recipe, write_recipe  # noqa: F401
