"""Tokenizer directories shared by the data tests (built once per session, offline; see tests/hf_assets.py)."""
import pytest


@pytest.fixture(scope='session')
def hf_dirs(tmp_path_factory):
  """{'llama3': DIR, 'qwen': DIR, 'gemma': DIR}; skips when transformers (a test-only dependency) is missing."""
  pytest.importorskip('transformers')
  from tests.hf_assets import STYLES, make_tokenizer_dir
  root = tmp_path_factory.mktemp('hf_tokenizers')
  return {style: make_tokenizer_dir(str(root / style), style) for style in STYLES}
