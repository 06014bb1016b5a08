"""Hugging Face tokenizer directories: the same ids, texts and chat renderings as transformers, and clear errors."""
import json
import os
import shutil

import pytest

from nlhf_jax.data.chat_template import ChatTemplate
from nlhf_jax.data.hf_tokenizer import HFTokenizer
from nlhf_jax.data.tokenizer import ByteTokenizer, TokenizerError, load_tokenizer

STRINGS = ['Hello world', 'café naïve über garçon', '猫 日本語 and 🙂 emoji 🦊', '  leading spaces', 'trailing  ',
           'multiple   spaces   inside', 'line one\nline two\n\n', '\ttab', 'ß Ωmega', '',
           'special <|eot_id|> text <|im_end|> and <end_of_turn> inside', '<bos>the fox<eos>']
SYSTEM = {'role': 'system', 'content': 'You are brief.'}
CONVERSATIONS = [
    [{'role': 'user', 'content': 'What is a fox?'}],
    [SYSTEM, {'role': 'user', 'content': 'Sort: dog cat'}],
    [SYSTEM, {'role': 'user', 'content': 'Hi 猫'}, {'role': 'assistant', 'content': 'Hello 🙂'},
     {'role': 'user', 'content': 'And   now?\n'}],
    [{'role': 'user', 'content': 'q'}, {'role': 'assistant', 'content': 'a'}],
]


@pytest.fixture(scope='module')
def pairs(hf_dirs):
  """style -> (our tokenizer, transformers' tokenizer)."""
  from transformers import AutoTokenizer
  return {style: (load_tokenizer(d), AutoTokenizer.from_pretrained(d)) for style, d in hf_dirs.items()}


def _ids(out):
  return list(out['input_ids'] if hasattr(out, 'keys') else out)


@pytest.mark.parametrize('style', ['llama3', 'qwen', 'gemma'])
def test_encode_decode_equal_transformers(pairs, style):
  tok, ref = pairs[style]
  assert isinstance(tok, HFTokenizer) and tok.vocab_size == len(ref)
  for text in STRINGS:
    ids = tok.encode(text)
    assert ids == ref.encode(text, add_special_tokens=False), text
    full = ref.encode(text)
    assert tok.decode(full) == ref.decode(full, skip_special_tokens=True), text
  special = tok.encode('<|eot_id|>' if style == 'llama3' else '<|im_end|>' if style == 'qwen' else '<end_of_turn>')
  assert len(special) == 1 and special[0] in tok.stop_ids  # special-token text maps to its id
  ids = tok.encode('the fox')
  assert tok.decode(ids + [tok.vocab_size, tok.vocab_size + 5, tok.pad_id]) == 'the fox'  # padded vocabularies


def test_special_ids_bos_and_stop_ids(pairs, hf_dirs):
  llama, _ = pairs['llama3']
  qwen, _ = pairs['qwen']
  gemma, gemma_ref = pairs['gemma']
  tid = lambda tok, t: tok.encode(t)[0]  # noqa: E731
  assert llama.bos_id == tid(llama, '<|begin_of_text|>') and llama.eos_id == tid(llama, '<|end_of_text|>')
  assert llama.stop_ids == (tid(llama, '<|end_of_text|>'), tid(llama, '<|eot_id|>'))  # generation_config's two
  assert llama.pad_id == tid(llama, '<|finetune_right_pad_id|>') and llama.sep_id is None
  assert qwen.bos_id is None and qwen.eos_id == tid(qwen, '<|im_end|>')
  assert set(qwen.stop_ids) == {tid(qwen, '<|im_end|>'), tid(qwen, '<|endoftext|>')}
  assert gemma.bos_id == gemma_ref.bos_token_id and tid(gemma, '<end_of_turn>') in gemma.stop_ids
  for style, (tok, ref) in pairs.items():
    gen = json.load(open(os.path.join(hf_dirs[style], 'generation_config.json')))
    assert set(gen['eos_token_id']) <= set(tok.stop_ids) and tok.eos_id in tok.stop_ids
    assert tok.has_chat_template
    # A plain prompt is what the post-processor makes of it; a plain response ends in eos.
    assert tok.prompt_ids('the quick fox') == ref.encode('the quick fox')
    assert tok.response_ids('lazy dog') == ref.encode('lazy dog', add_special_tokens=False) + [tok.eos_id]


@pytest.mark.parametrize('style', ['llama3', 'qwen', 'gemma'])
def test_chat_rendering_equals_apply_chat_template(pairs, style):
  tok, ref = pairs[style]
  for conv in CONVERSATIONS:
    for gen in (True, False):
      text = ref.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
      assert tok.render(conv, gen) == text
      assert tok.encode(text) == _ids(ref.apply_chat_template(conv, tokenize=True, add_generation_prompt=gen))
    assert tok.prompt_ids(conv) == _ids(ref.apply_chat_template(conv, add_generation_prompt=True))
  one_turn = [{'role': 'user', 'content': 'Sort: dog cat'}]
  assert tok.prompt_ids('Sort: dog cat', chat=True) == _ids(ref.apply_chat_template(one_turn,
                                                                                    add_generation_prompt=True))


@pytest.mark.parametrize('style', ['llama3', 'qwen', 'gemma'])
def test_response_ids_are_the_conversations_continuation(pairs, style):
  tok, ref = pairs[style]
  eot = tok.encode({'llama3': '<|eot_id|>', 'qwen': '<|im_end|>', 'gemma': '<end_of_turn>'}[style])[0]
  assert tok.end_of_turn_id == eot and eot in tok.stop_ids
  for prompt in CONVERSATIONS[:3]:
    answer = [{'role': 'assistant', 'content': 'Cat dog 🐈.'}]
    ids = tok.response_ids(answer, prompt)
    assert ids[-1] == eot and eot not in ids[:-1]
    full = _ids(ref.apply_chat_template(prompt + answer))
    head = _ids(ref.apply_chat_template(prompt, add_generation_prompt=True))
    assert full[:len(head)] == head and full[len(head):len(head) + len(ids)] == ids  # no newline after eot
    assert tok.response_ids('Cat dog 🐈.', prompt) == ids  # a string is one assistant message
    assert tok.decode(ids) == 'Cat dog 🐈.'
  assert tok.response_ids('x y', 'Sort: y x', chat=True) == tok.response_ids([{'role': 'assistant', 'content': 'x y'}],
                                                                             [{'role': 'user', 'content': 'Sort: y x'}])


def test_template_errors_name_the_template(pairs):
  gemma, _ = pairs['gemma']
  with pytest.raises(TokenizerError, match=r'chat template .*chat_template.jinja: Conversation roles must alternate'):
    gemma.prompt_ids([{'role': 'assistant', 'content': 'first'}])
  llama, _ = pairs['llama3']
  bad = [{'role': 'user', 'content': 'q'}, {'role': 'system', 'content': 'late'}]
  with pytest.raises(TokenizerError, match='A system message may only come first'):
    llama.prompt_ids(bad)
  with pytest.raises(TokenizerError, match='needs its prompt'):
    llama.response_ids([{'role': 'assistant', 'content': 'a'}])


def test_template_features():
  """The environment transformers gives templates: tojson without HTML escaping, loop controls, raise_exception,
  strftime_now, namespace, the generation block and the variables."""
  pytest.importorskip('jinja2')
  source = ("{%- set ns = namespace(n=0) %}{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
            "{% set ns.n = ns.n + 1 %}{{ m | tojson }}|{% endfor %}{{ ns.n }}"
            "{% generation %}[{{ bos_token }}{{ add_generation_prompt }}{{ tools }}]{% endgeneration %}"
            "{{ strftime_now('%Y') | length }}")
  t = ChatTemplate(source, 'test.jinja')
  msgs = [{'role': 'user', 'content': '<a & b> é'}, {'role': 'assistant', 'content': 'x', 'name': None}, {}]
  assert t.render(msgs, True, {'bos_token': '<s>'}) == (
      '{"role": "user", "content": "<a & b> é"}|{"role": "assistant", "content": "x"}|2[<s>TrueNone]4')
  with pytest.raises(TokenizerError, match=r'chat template test.jinja: stop here'):
    ChatTemplate("{{ raise_exception('stop here') }}", 'test.jinja').render([], False, {})
  with pytest.raises(TokenizerError, match=r'bad.jinja: the chat template does not compile'):
    ChatTemplate('{% for %}', 'bad.jinja')
  with pytest.raises(TokenizerError, match='test.jinja'):
    ChatTemplate("{% set ns = namespace(_x=1) %}", 'test.jinja').render([], False, {})
  with pytest.raises(TokenizerError, match="test.jinja: access to attribute '__class__' of 'list' object is unsafe"):
    ChatTemplate("{{ messages.__class__.__mro__ }}", 'test.jinja').render([], False, {})
  with pytest.raises(TokenizerError, match="attribute 'append' of 'list' object is unsafe"):  # immutable sandbox
    ChatTemplate("{{ messages.append(1) }}", 'test.jinja').render([], False, {})


def _copy(src, dst, drop=(), edit_config=None):
  shutil.copytree(src, dst)
  for name in drop:
    os.remove(os.path.join(dst, name))
  if edit_config:
    path = os.path.join(dst, 'tokenizer_config.json')
    config = json.load(open(path))
    edit_config(config)
    json.dump(config, open(path, 'w'))
  return str(dst)


def test_config_forms(hf_dirs, tmp_path):
  """The template in tokenizer_config.json (a string or named templates), tokens as {"content"} objects,
  special_tokens_map.json, pad falling back to eos, no template at all."""
  template = open(os.path.join(hf_dirs['qwen'], 'chat_template.jinja')).read()
  named = _copy(hf_dirs['qwen'], tmp_path / 'named', drop=['chat_template.jinja'], edit_config=lambda c: c.update(
      chat_template=[{'name': 'tool_use', 'template': 'x'}, {'name': 'default', 'template': template}],
      eos_token={'content': '<|im_end|>', 'special': True}, pad_token=None))
  tok, ref = HFTokenizer(named), load_tokenizer(hf_dirs['qwen'])
  assert tok.prompt_ids(CONVERSATIONS[1]) == ref.prompt_ids(CONVERSATIONS[1])
  assert tok.eos_id == ref.eos_id and tok.pad_id == tok.eos_id
  mapped = _copy(hf_dirs['llama3'], tmp_path / 'mapped', drop=['generation_config.json'],
                 edit_config=lambda c: c.pop('eos_token'))
  json.dump({'eos_token': {'content': '<|eot_id|>'}}, open(os.path.join(mapped, 'special_tokens_map.json'), 'w'))
  tok = HFTokenizer(mapped)
  assert tok.stop_ids == (tok.encode('<|eot_id|>')[0],) and tok.eos_id == tok.end_of_turn_id
  plain = HFTokenizer(_copy(hf_dirs['llama3'], tmp_path / 'plain', drop=['chat_template.jinja']))
  assert not plain.has_chat_template and plain.stop_ids == (plain.eos_id, plain.encode('<|eot_id|>')[0])
  with pytest.raises(TokenizerError, match=r'plain has no chat template .*data.chat_template=False'):
    plain.prompt_ids('hi', chat=True)
  no_default = _copy(hf_dirs['qwen'], tmp_path / 'no_default', drop=['chat_template.jinja'],
                     edit_config=lambda c: c.update(chat_template=[{'name': 'tool_use', 'template': 'x'}]))
  with pytest.raises(TokenizerError, match=r"tokenizer_config.json: chat_template lists templates \['tool_use'\] but "
                                           r"none named 'default'"):
    HFTokenizer(no_default)


def test_load_errors(hf_dirs, tmp_path):
  with pytest.raises(TokenizerError, match=r"tokenizer='.*/absent': no such directory; give a Hugging Face"):
    load_tokenizer(str(tmp_path / 'absent'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(TokenizerError, match=r"empty': the directory has no tokenizer.json"):
    load_tokenizer(str(tmp_path / 'empty'))
  (tmp_path / 'sp').mkdir()
  (tmp_path / 'sp' / 'tokenizer.model').write_bytes(b'')
  with pytest.raises(TokenizerError, match=r'has tokenizer.model but no tokenizer.json; write one with transformers'):
    load_tokenizer(str(tmp_path / 'sp'))
  broken = _copy(hf_dirs['qwen'], tmp_path / 'broken')
  with open(os.path.join(broken, 'tokenizer_config.json'), 'a') as f:
    f.write('{')
  with pytest.raises(TokenizerError, match=r'broken/tokenizer_config.json: malformed JSON \(Extra data at line'):
    load_tokenizer(broken)
  bad_eos = _copy(hf_dirs['qwen'], tmp_path / 'bad_eos', edit_config=lambda c: c.update(eos_token='<nope>'))
  with pytest.raises(TokenizerError, match=r"the eos_token '<nope>' of tokenizer_config.json is not in tokenizer.json"):
    load_tokenizer(bad_eos)
  assert isinstance(load_tokenizer(os.path.join(hf_dirs['qwen'], 'tokenizer.json')), HFTokenizer)


def test_native_tokenizers_frame_as_before_and_refuse_conversations():
  tok = ByteTokenizer()
  assert tok.prompt_ids('sort: b a') == [tok.bos_id] + tok.encode('sort: b a') + [tok.sep_id]
  assert tok.response_ids('a b', 'sort: b a') == tok.encode('a b') + [tok.eos_id]
  assert tok.stop_ids == (tok.eos_id,) and not tok.has_chat_template
  with pytest.raises(TokenizerError, match=r'the byte tokenizer \(data.tokenizer=bytes\) has no chat template'):
    tok.prompt_ids([{'role': 'user', 'content': 'hi'}])
  with pytest.raises(TokenizerError, match='has no chat template'):
    tok.prompt_ids('hi', chat=True)
  with pytest.raises(TokenizerError, match='has no chat template'):
    tok.response_ids('a', [{'role': 'user', 'content': 'hi'}])


def test_unreadable_tokenizer_json(hf_dirs, tmp_path):
  broken = _copy(hf_dirs['llama3'], tmp_path / 'bad_json')
  with open(os.path.join(broken, 'tokenizer.json'), 'w') as f:
    f.write('{"model": 3}')
  with pytest.raises(TokenizerError, match=r'bad_json/tokenizer.json: not a tokenizer the tokenizers library can read'):
    load_tokenizer(broken)
