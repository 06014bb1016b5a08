"""nlhf_jax.outputs: the rule every writing command follows (check first, never replace unasked, rename)."""
import os

import pytest

from nlhf_jax import outputs
from nlhf_jax.outputs import OutputError


def test_check_file_refuses_what_exists_and_folders(tmp_path):
  target = tmp_path / 'a.json'
  outputs.check_file(str(target))  # new: fine
  target.write_text('old')
  with pytest.raises(OutputError, match='already exists; pass --overwrite'):
    outputs.check_file(str(target))
  outputs.check_file(str(target), overwrite=True)
  with pytest.raises(OutputError, match='is a folder'):
    outputs.check_file(str(tmp_path))
  with pytest.raises(OutputError, match='is a file, not a folder'):
    outputs.check_file(str(target / 'b.json'), overwrite=True)


def test_check_dir_names_what_would_be_replaced(tmp_path):
  outputs.check_dir(str(tmp_path / 'new'), ['config.json'])
  (tmp_path / 'config.json').write_text('{}')
  (tmp_path / 'other.txt').write_text('')
  outputs.check_dir(str(tmp_path), ['model.safetensors'])
  with pytest.raises(OutputError, match=r'already holds config.json; pass --overwrite'):
    outputs.check_dir(str(tmp_path), ['config.json', 'model.safetensors'])
  with pytest.raises(OutputError, match='config.json, other.txt'):
    outputs.check_dir(str(tmp_path), empty=True)
  outputs.check_dir(str(tmp_path), ['config.json'], overwrite=True)
  with pytest.raises(OutputError, match='is a file, not a folder'):
    outputs.check_dir(str(tmp_path / 'config.json'))


def test_a_folder_with_hidden_entries_is_not_empty(tmp_path):
  """building_dir replaces the whole folder, so `empty` counts .git and other hidden entries too."""
  (tmp_path / '.git').mkdir()
  with pytest.raises(OutputError, match=r'already holds \.git; pass --overwrite'):
    outputs.check_dir(str(tmp_path), empty=True)
  outputs.check_dir(str(tmp_path), ['config.json'])  # named outputs only: hidden entries stay
  outputs.check_dir(str(tmp_path), empty=True, overwrite=True)


def test_an_interrupted_write_keeps_the_old_file(tmp_path):
  target = tmp_path / 'a.txt'
  target.write_text('old')
  with pytest.raises(RuntimeError):
    with outputs.replacing_file(str(target)) as f:
      f.write('half')
      raise RuntimeError('killed')
  assert target.read_text() == 'old' and os.listdir(tmp_path) == ['a.txt']
  outputs.write_json(str(target), {'x': 1})
  assert target.read_text() == '{\n  "x": 1\n}\n' and os.listdir(tmp_path) == ['a.txt']


def test_a_folder_is_replaced_only_once_complete(tmp_path):
  final = tmp_path / 'out'
  final.mkdir()
  (final / 'old.txt').write_text('old')
  with pytest.raises(RuntimeError):
    with outputs.building_dir(str(final)) as tmp:
      open(os.path.join(tmp, 'new.txt'), 'w').close()
      raise RuntimeError('killed')
  assert os.listdir(final) == ['old.txt'] and os.listdir(tmp_path) == ['out']
  with outputs.building_dir(str(final)) as tmp:
    open(os.path.join(tmp, 'new.txt'), 'w').close()
  assert os.listdir(final) == ['new.txt'] and os.listdir(tmp_path) == ['out']


@pytest.mark.parametrize('how', ['building_dir', 'staging'])
def test_a_failed_publish_puts_the_old_folder_back(tmp_path, monkeypatch, how):
  """When the new folder cannot be renamed into place, the old one (already moved aside) returns to its name."""
  from nlhf_jax.interop import runs
  final = tmp_path / 'out'
  final.mkdir()
  (final / 'old.txt').write_text('old')
  real = os.replace

  def replace(src, dst):
    if str(dst) == str(final) and 'old' not in os.path.basename(str(src)):  # the new folder into place
      raise OSError('the rename failed')
    return real(src, dst)
  monkeypatch.setattr(os, 'replace', replace)
  building = outputs.building_dir(str(final)) if how == 'building_dir' else runs.staging(str(final), 'export')
  with pytest.raises(OSError, match='the rename failed'):
    with building as tmp:
      open(os.path.join(tmp, 'new.txt'), 'w').close()
  assert os.listdir(final) == ['old.txt'] and os.listdir(tmp_path) == ['out']


def test_a_replaced_folder_keeps_its_hidden_entries(tmp_path):
  final = tmp_path / 'out'
  (final / '.git').mkdir(parents=True)
  (final / '.git' / 'HEAD').write_text('ref')
  (final / '.gitattributes').write_text('old')
  (final / 'model.safetensors').write_text('old')
  with outputs.building_dir(str(final)) as tmp:
    open(os.path.join(tmp, 'model.safetensors'), 'w').close()
    with open(os.path.join(tmp, '.gitattributes'), 'w') as f:
      f.write('new')
  assert sorted(os.listdir(final)) == ['.git', '.gitattributes', 'model.safetensors']
  assert (final / '.git' / 'HEAD').read_text() == 'ref' and (final / '.gitattributes').read_text() == 'new'
  assert (final / 'model.safetensors').read_text() == '' and os.listdir(tmp_path) == ['out']


def test_an_export_killed_between_its_renames_gets_its_old_folder_back(tmp_path):
  from nlhf_jax.interop import runs
  final = tmp_path / 'out'
  old = tmp_path / '.out.export-old'
  old.mkdir()
  (old / 'config.json').write_text('old')  # `out` was moved aside, then the process was killed
  with pytest.raises(RuntimeError):
    with runs.staging(str(final), 'export'):
      raise RuntimeError('refused later')
  assert (final / 'config.json').read_text() == 'old' and os.listdir(tmp_path) == ['out']
