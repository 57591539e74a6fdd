"""Chat distillation: rendering with each model's own template, content alignment, loss masks, on-policy turns."""

import datetime as dt
import gzip
import json
import re
import shutil

import numpy as np
import pytest
import torch

from xtok_core import XtokError, load_tokenizer
from xtok_core import chat as C
from xtok_core.corpus import CHAT_EVAL, CHAT_TRAIN, _held_out, chat_set, generate_chat
from xtok_core.losses.positions import _pairs
from xtok_core.tok import ASSETS

BUNDLED = ["llama-3.2", "qwen2.5", "qwen3", "phi-3-mini"]
TEMPLATED = BUNDLED + ["smollm2"]
EOT = {"llama-3.2": "<|eot_id|>", "qwen2.5": "<|im_end|>", "qwen3": "<|im_end|>", "phi-3-mini": "<|end|>",
       "smollm2": "<|im_end|>"}
CONVERSATIONS = [
    [{"role": "user", "content": "What is 347 + 1286?"}, {"role": "assistant", "content": "347 + 1286 = 1633."}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "The lamp is $1,234.56. Tax 8%?"},
     {"role": "assistant", "content": "8% of $1,234.56 is $98.76."}, {"role": "user", "content": "And on 2024-03-15?"},
     {"role": "assistant", "content": "The same: $98.76 on 2024-03-15."}],
    [{"role": "user", "content": "Write a loop, naïve café 😀"},
     {"role": "assistant", "content": "for i in range(3):\n    print(i * i)"}],
]
# Gemma-style (written with ChatML's tokens): no system turn, the system message is folded into the first user turn
FOLDING = ("{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\n\n' %}"
           "{% set rest = messages[1:] %}{% else %}{% set first = '' %}{% set rest = messages %}{% endif %}"
           "{% for m in rest %}{{ '<|im_start|>' + m['role'] + '\n' + (first if loop.first else '') + m['content'] | trim + '<|im_end|>\n' }}"
           "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
REJECTING = ("{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
             "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
             "{{ '<start_of_turn>' + m['role'] + '\n' + m['content'] + '<end_of_turn>\n' }}{% endfor %}")
# llama.cpp's early Phi-3 template: silently drops system messages
DROPPING = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') %}"
            "{{'<|user|>' + '\n' + message['content'] + '<|end|>' + '\n' + '<|assistant|>' + '\n'}}"
            "{% elif (message['role'] == 'assistant') %}{{message['content'] + '<|end|>' + '\n'}}{% endif %}{% endfor %}")


@pytest.fixture(scope="session")
def smollm2_dir():
    from xtok_core import models as M

    entry = M.REGISTRY["smollm2-135m-instruct"]
    return M.converted_dir(entry.locate(entry), entry.name, entry)


@pytest.fixture(scope="session")
def chat_tok(smollm2_dir):
    def get(name):
        return load_tokenizer(smollm2_dir if name == "smollm2" else name)
    return get


@pytest.fixture(scope="session")
def reference(tmp_path_factory, smollm2_dir):
    """name -> transformers' own AutoTokenizer over the same files (it finds the template by itself)."""
    from transformers import AutoTokenizer

    cache = {}

    def get(name):
        if name not in cache:
            if name == "smollm2":
                d = smollm2_dir
            else:
                d = tmp_path_factory.mktemp(name)
                (d / "tokenizer.json").write_bytes(gzip.decompress((ASSETS / name / "tokenizer.json.gz").read_bytes()))
                shutil.copy(ASSETS / name / "tokenizer_config.json", d / "tokenizer_config.json")
            cache[name] = AutoTokenizer.from_pretrained(str(d), local_files_only=True, trust_remote_code=False)
        return cache[name]

    return get


def _ref_text(ref, msgs, **kw):
    return ref.apply_chat_template(msgs, tokenize=False, enable_thinking=False, **kw)


def _ref_ids(ref, msgs, **kw):
    out = ref.apply_chat_template(msgs, tokenize=True, enable_thinking=False, **kw)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


# ----------------------------------------------------------------------------- rendering
@pytest.mark.parametrize("name", TEMPLATED)
def test_render_chat_is_apply_chat_template_byte_for_byte_with_its_ids(name, chat_tok, reference):
    tok, ref = chat_tok(name), reference(name)
    for msgs in CONVERSATIONS:
        enc = C.render_chat(msgs, tok)
        assert enc.text == _ref_text(ref, msgs)
        assert enc.ids.tolist() == _ref_ids(ref, msgs)
        # the template's tokens are single special ids, not spelled out
        eot_id = tok.backend.token_to_id(EOT[name])
        assert int((enc.ids == eot_id).sum()) >= sum(m["role"] == "assistant" for m in msgs)


@pytest.mark.parametrize("name", TEMPLATED)
def test_content_ranges_hold_exactly_each_message_text(name, chat_tok):
    tok = chat_tok(name)
    msgs = CONVERSATIONS[1] + [{"role": "user", "content": "  padded question \n"},
                               {"role": "assistant", "content": "\n\n spaced answer 42 \n"}]
    enc = C.render_chat(msgs, tok)
    raw = enc.text.encode()
    for m, span in zip(msgs, enc.messages):
        content = m["content"].encode()
        lead, trail = span.trimmed
        assert span.role == m["role"]
        assert raw[span.start:span.end] == content[lead:len(content) - trail]
        # only whitespace may be trimmed, and only by the templates that trim (Llama-3's `| trim`)
        assert not content[:lead].strip() and not content[len(content) - trail:].strip()
    trims = [s.trimmed for s in enc.messages]
    if name == "llama-3.2":    # `| trim` on every message
        assert trims[-2:] == [(2, 2), (3, 2)]
    elif name == "qwen3":      # `content.lstrip('\n')` on the last assistant turn
        assert trims == [(0, 0)] * 6 + [(2, 0)]
    else:
        assert trims == [(0, 0)] * 7


@pytest.mark.parametrize("name", TEMPLATED)
def test_generation_prompt_ends_where_the_assistant_content_begins(name, chat_tok, reference):
    tok = chat_tok(name)
    for msgs in CONVERSATIONS:
        full = C.render_chat(msgs, tok)
        prompt = C.render_chat(msgs[:-1], tok, add_generation_prompt=True)
        assert prompt.text == _ref_text(reference(name), msgs[:-1], add_generation_prompt=True)
        assert full.text.encode()[:full.messages[-1].start] == prompt.text.encode()
        assert prompt.eot[-1] >= 0 and C.render_chat(msgs, tok).eot[-1] >= 0


def test_a_token_straddling_the_template_content_boundary_is_content_clipped_to_the_content(chat_tok):
    # ChatML puts "\n" after the role; a content starting with "\n" merges with it into one "\n\n" token
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "\nThe answer is 4."}]
    qwen = chat_tok("qwen2.5")
    enc = C.render_chat(msgs, qwen)
    span = enc.messages[1]
    first = int(np.flatnonzero(enc.token_message == 1)[0])
    assert qwen.token_bytes[int(enc.ids[first])] == b"\n\n"
    assert enc.offsets[first, 0] < span.start < enc.offsets[first, 1]   # it straddles the boundary
    a = C.align_chat(msgs, "qwen2.5", chat_tok("smollm2"))
    grp = a.groups[int(a.student_group[first])]
    assert first in grp.student and a.group_message[a.student_group[first]] == 1
    lo, hi = a.message_spans[1]
    # its alignment span is the content's one "\n": the group starts exactly at the content
    assert a.student_spans[first].tolist() == [lo, lo + 1]
    assert a.group_bytes(grp).startswith(b"\n") and a.text.encode()[lo:hi] == msgs[1]["content"].encode()


# ----------------------------------------------------------------------------- alignment
PAIRS = [("llama-3.2", "qwen2.5"), ("qwen3", "phi-3-mini"), ("smollm2", "llama-3.2"), ("phi-3-mini", "qwen2.5")]


def _template_positions(enc):
    """Tokens with no byte inside any content range, and special tokens: computed from bytes alone."""
    raw_len = len(enc.text.encode())
    inside = np.zeros(raw_len + 1, np.int64)
    for m in enc.messages:
        inside[m.start:m.end] = 1
    cum = np.concatenate(([0], np.cumsum(inside)))
    o = enc.offsets
    n_in = cum[o[:, 1]] - cum[o[:, 0]]
    return (n_in == 0) | enc.tok.special[enc.ids]


@pytest.mark.parametrize("student,teacher", PAIRS)
def test_align_chat_groups_only_content_and_pairs_end_of_turn_by_role(student, teacher, chat_tok):
    s_tok, t_tok = chat_tok(student), chat_tok(teacher)
    for msgs in CONVERSATIONS:
        a = C.align_chat(msgs, s_tok, t_tok)
        sc, tc = a.student_chat, a.teacher_chat
        s_tmpl, t_tmpl = _template_positions(sc), _template_positions(tc)
        eot_s = {a.groups[g].student.start for g in a.eot_groups.values()}
        eot_t = {a.groups[g].teacher.start for g in a.eot_groups.values()}
        for n, g in enumerate(a.groups):
            if n in a.eot_groups.values():
                continue
            assert not s_tmpl[list(g.student)].any() and not t_tmpl[list(g.teacher)].any(), (n, g)
        # template tokens are in no group; the only special tokens in groups are the end-of-turn pairs
        assert (a.student_group[s_tmpl & ~np.isin(np.arange(len(sc.ids)), list(eot_s))] == -1).all()
        assert (a.teacher_group[t_tmpl & ~np.isin(np.arange(len(tc.ids)), list(eot_t))] == -1).all()
        # every assistant message's end-of-turn token is paired with the other side's, by role
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            g = a.groups[a.eot_groups[i]]
            assert s_tok.backend.id_to_token(int(sc.ids[g.student.start])) == EOT[student]
            assert t_tok.backend.id_to_token(int(tc.ids[g.teacher.start])) == EOT[teacher]
            assert len(g.student) == len(g.teacher) == 1
            # every content byte of the message is in exactly one group on each side
            lo, hi = a.message_spans[i]
            assert a.text.encode()[lo:hi] == m["content"].strip().encode() or a.text.encode()[lo:hi] == m["content"].encode()
            for spans, group in ((a.student_spans, a.student_group), (a.teacher_spans, a.teacher_group)):
                cover = np.zeros(hi - lo, np.int64)
                mine = np.flatnonzero((group >= 0) & np.isin(group, np.flatnonzero(a.group_message == i)))
                for p in mine:
                    cover[max(spans[p, 0], lo) - lo:min(spans[p, 1], hi) - lo] += 1
                assert (cover == 1).all()
        # the networkx view agrees: template tokens are isolated, each content group is one component
        import networkx as nx

        comps = [c for c in nx.connected_components(a.to_networkx()) if len(c) > 1]
        two_sided = [g for g in a.groups if len(g.student) and len(g.teacher)]
        assert len(comps) == len(two_sided)


def test_a_system_message_folded_into_the_user_turn_stays_its_own_content(chat_tok):
    msgs = CONVERSATIONS[1]
    folding = chat_tok("qwen2.5")
    enc = C.render_chat(msgs, folding, chat_template=FOLDING)
    assert enc.text.count("<|im_start|>") == 4
    raw = enc.text.encode()
    sys_span, user_span = enc.messages[0], enc.messages[1]
    assert raw[sys_span.start:sys_span.end] == msgs[0]["content"].encode()
    assert raw[user_span.start:user_span.end] == msgs[1]["content"].encode()
    assert raw[sys_span.end:user_span.start] == b"\n\n"             # both inside one user turn
    assert enc.eot[0] == -1 and enc.eot[1] >= 0                      # the system message has no turn of its own
    a = C.align_chat(msgs, folding, "llama-3.2", student_template=FOLDING)
    assert 0 not in a.eot_groups and {2, 4} <= set(a.eot_groups)
    sys_groups = np.flatnonzero(a.group_message == 0)
    assert len(sys_groups) and all(a.groups[g].kind != "special" for g in sys_groups)
    assert b"".join(a.group_bytes(a.groups[g]) for g in sys_groups) == msgs[0]["content"].encode()


def test_a_template_that_rejects_or_drops_the_system_message_gets_one_line(chat_tok):
    msgs = CONVERSATIONS[1]
    with pytest.raises(XtokError) as e:
        C.render_chat(msgs, chat_tok("gemma"), chat_template=REJECTING, name="chat.jsonl row 3")
    msg = str(e.value)
    assert "chat.jsonl row 3" in msg and "Only user and assistant roles" in msg and "\n" not in msg
    with pytest.raises(XtokError, match=r"row 5: .* drops message 0 \(system\)"):
        C.render_chat(msgs, chat_tok("phi-3-mini"), chat_template=DROPPING, name="row 5")


def test_no_template_gives_one_line_and_a_template_file_fixes_it(tmp_path, chat_tok):
    with pytest.raises(XtokError, match="--chat-template FILE") as e:
        C.render_chat(CONVERSATIONS[0], "gpt2")
    assert "\n" not in str(e.value)
    f = tmp_path / "t.jinja"
    f.write_text("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + eos_token + '\n' }}{% endfor %}")
    enc = C.render_chat(CONVERSATIONS[0], "gpt2", chat_template=f)
    assert enc.text == "user: What is 347 + 1286?<|endoftext|>\nassistant: 347 + 1286 = 1633.<|endoftext|>\n"
    assert enc.eot.tolist() == [int(np.flatnonzero(enc.ids == 50256)[0]), int(np.flatnonzero(enc.ids == 50256)[1])]


@pytest.mark.parametrize("bad,what", [
    ([], "empty list"),
    ([{"role": "user", "content": ["a", "list"]}, {"role": "assistant", "content": "x"}], "list content"),
    ([{"role": "user"}], "not a {'role'"),
    ([{"role": "user", "content": "Hi"}], "no assistant turn"),
    ([{"role": "tool", "content": "42"}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "x"}],
     "drops message 0 (tool)"),
])
def test_bad_conversations_get_one_line_naming_the_row(bad, what, chat_tok):
    with pytest.raises(XtokError) as e:
        C.align_chat_batch([CONVERSATIONS[0], bad], chat_tok("llama-3.2"), chat_tok("phi-3-mini"),
                           names=["data.jsonl row 0", "data.jsonl row 1"])
    msg = str(e.value)
    assert msg.startswith("data.jsonl row 1:") and what in msg and "\n" not in msg


# ----------------------------------------------------------------------------- training masks
def _expected_targets(enc, msgs, loss_on):
    """Target tokens from the byte ranges alone: a token overlapping an assistant content range, or the
    template's end-of-turn token that follows it."""
    o, want = enc.offsets, np.zeros(len(enc.ids), bool)
    eot_id = enc.tok.backend.token_to_id(EOT.get(enc.tok.name, "<|im_end|>"))
    for m, span in zip(msgs, enc.messages):
        if loss_on == "assistant" and m["role"] != "assistant":
            continue
        inside = (o[:, 0] < span.end) & (o[:, 1] > span.start) & ~enc.tok.special[enc.ids]
        want |= inside
        after = np.flatnonzero((np.arange(len(o)) > np.flatnonzero(inside).max()) & (enc.ids == eot_id))
        want[after[0]] = True
    return want


@pytest.mark.parametrize("student,teacher", PAIRS)
def test_kd_and_ce_positions_are_the_assistant_content_and_end_of_turn(student, teacher, chat_tok):
    convs = CONVERSATIONS + chat_set("train")[:5]
    s_tok, t_tok = chat_tok(student), chat_tok(teacher)
    batch = C.align_chat_batch(convs, s_tok, t_tok)
    B, T_s, T_t = batch.student_ids.shape[0], batch.student_ids.shape[1], batch.teacher_ids.shape[1]
    assert B == len(convs)
    b, s_pos, t_pos, h = _pairs(batch, T_s, T_t)   # exactly the pairs DistillLoss compares
    for r, msgs in enumerate(convs):
        sc, tc = batch.student_chats[r], batch.teacher_chats[r]
        want_s, want_t = _expected_targets(sc, msgs, "assistant"), _expected_targets(tc, msgs, "assistant")
        n_s, n_t = len(sc.ids), len(tc.ids)
        assert batch.student_target[r, :n_s].numpy().tolist() == want_s.tolist()
        assert batch.teacher_target[r, :n_t].numpy().tolist() == want_t.tolist()
        assert not batch.student_target[r, n_s:].any()
        labels = batch.labels[r].numpy()
        assert (labels[:n_s][want_s] == sc.ids[want_s]).all() and (labels[~np.r_[want_s, np.zeros(T_s - n_s, bool)]] == -100).all()
        # the KD pairs predict exactly the target groups, and those groups hold exactly the target tokens
        paired = set(h[b == r].tolist())
        assert paired == set(np.flatnonzero(batch.kd_target[r].numpy()).tolist())
        s_in = np.isin(batch.student_group[r, :n_s].numpy(), list(paired))
        t_in = np.isin(batch.teacher_group[r, :n_t].numpy(), list(paired))
        assert s_in.tolist() == want_s.tolist() and t_in.tolist() == want_t.tolist()


def test_loss_on_all_trains_the_whole_rendering(chat_tok):
    convs = CONVERSATIONS[1:2]
    batch = C.align_chat_batch(convs, chat_tok("llama-3.2"), chat_tok("qwen2.5"), loss_on="all")
    n_s = len(batch.student_chats[0].ids)
    assert (batch.labels[0, :n_s] == batch.student_ids[0, :n_s]).all()
    b, _, _, h = _pairs(batch, batch.student_ids.shape[1], batch.teacher_ids.shape[1])
    kd_messages = set(batch.group_message[0, h].tolist())
    assert kd_messages == {0, 1, 2, 3, 4}    # the system and user content too, not only the assistant's
    with pytest.raises(XtokError, match="--loss-on"):
        C.align_chat_batch(convs, "llama-3.2", "qwen2.5", loss_on="prompt")


def test_truncation_cuts_whole_messages_from_the_start_and_keeps_the_system(chat_tok):
    msgs = [{"role": "system", "content": "Be exact."}]
    for k in range(6):
        msgs += [{"role": "user", "content": f"What is {k}23 + 4{k}5 and why is that so, exactly?"},
                 {"role": "assistant", "content": f"{k}23 + 4{k}5 = {int(f'{k}23') + int(f'4{k}5')}."}]
    s, t = chat_tok("llama-3.2"), chat_tok("qwen2.5")
    full = C.align_chat_batch([msgs], s, t)
    limit = full.teacher_ids.shape[1] - 30
    cut = C.align_chat_batch([msgs], s, t, max_length=limit)
    k = int(cut.kept[0])
    assert k > 1 and msgs[k]["role"] == "user"
    sc, tc = cut.student_chats[0], cut.teacher_chats[0]
    assert len(sc.ids) <= limit and len(tc.ids) <= limit
    # both sides see the same messages: the system message, then messages k.. whole
    for enc in (sc, tc):
        raw = enc.text.encode()
        assert [raw[m.start:m.end].decode() for m in enc.messages] == [m["content"] for m in [msgs[0]] + msgs[k:]]
    assert msgs[-1]["content"] in sc.tok.decode(cut.labels[0][cut.labels[0] >= 0].tolist())
    with pytest.raises(XtokError, match="--seq-len"):
        C.align_chat_batch([msgs], s, t, max_length=20)


# ----------------------------------------------------------------------------- on-policy
def test_on_policy_teacher_sees_its_own_template_around_the_student_text(chat_tok, reference):
    from xtok_core.models import build_tiny

    student = build_tiny("tiny:llama-3.2", dim=32, layers=1, seed=0)
    convs = [CONVERSATIONS[0], CONVERSATIONS[1]]
    torch.manual_seed(0)
    new = C.on_policy_conversations(student.model, student.tok, convs, max_new_tokens=12, temperature=1.0)
    for old, conv in zip(convs, new):
        assert conv[:-1] == C.prompt_for_turn(old) and conv[-1]["role"] == "assistant"
        text = conv[-1]["content"]
        # the student's own rendering of its prompt is what it continued
        for name in ("qwen2.5", "phi-3-mini"):
            t = C.render_chat(conv, chat_tok(name))
            decoded = chat_tok(name).decode(t.ids, skip_special_tokens=False)
            ref = reference(name)
            assert t.ids.tolist() == _ref_ids(ref, conv)
            assert decoded == ref.decode(_ref_ids(ref, conv), skip_special_tokens=False)
            if name == "qwen2.5":   # byte-level BPE decodes back to the rendering itself
                assert decoded == _ref_text(ref, conv) and text in decoded
            raw = t.text.encode()
            span = t.messages[-1]
            assert raw[span.start:span.end] == text.encode()[span.trimmed[0]:len(text.encode()) - span.trimmed[1]]
            assert raw[:span.start] == C.render_chat(conv[:-1], chat_tok(name), add_generation_prompt=True).text.encode()


def test_decode_turn_stops_at_the_end_of_turn_token(chat_tok):
    tok = chat_tok("llama-3.2")
    stops = C.end_of_turn_ids(tok)
    assert tok.backend.id_to_token(stops[0]) == "<|eot_id|>"
    ids = tok.encode("1633.").ids.tolist() + [stops[0]] + tok.encode(" junk").ids.tolist()
    assert C.decode_turn(tok, ids, stops) == "1633."
    assert C.with_turn(CONVERSATIONS[1], "x")[-1] == {"role": "assistant", "content": "x"}
    assert len(C.with_turn(CONVERSATIONS[1], "x")) == 5
    assert len(C.with_turn(CONVERSATIONS[1], "x", turn=2)) == 3


# ----------------------------------------------------------------------------- the bundled chat set
def test_chat_set_is_deterministic_split_and_correct():
    train, held = chat_set("train"), chat_set("eval")
    assert len(train) == CHAT_TRAIN and len(held) == CHAT_EVAL
    assert train == chat_set("train") and generate_chat(50, seed=1) != generate_chat(50, seed=0)

    def question(c):
        return c[1]["content"] if c[0]["role"] == "system" else c[0]["content"]

    assert not {question(c) for c in train} & {question(c) for c in held}
    add = re.compile(r"^(?:What is|Compute|How much is) (\d+) \+ (\d+)[?.]$")
    for c in train + held:
        roles = [m["role"] for m in c if m["role"] != "system"]
        assert roles[::2] == ["user"] * len(roles[::2]) and roles[1::2] == ["assistant"] * (len(roles) // 2)
        m = add.match(question(c))
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            assert _held_out(a, b) == (c in held) or c in held
            if c in train:
                assert not _held_out(a, b)
        for msg in c:   # every "x op y = z" an answer states is right
            for x, op, y, z in re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)", msg["content"]):
                assert eval(f"{x}{op}{y}") == int(z)
            d = re.match(r"^What date is (\d+) days after (\d{4}-\d\d-\d\d)\?$", msg["content"])
            if d:
                nxt = c[c.index(msg) + 1]["content"]
                assert nxt == (dt.date.fromisoformat(d.group(2)) + dt.timedelta(days=int(d.group(1)))).isoformat() + "."


# ----------------------------------------------------------------------------- chat data for runs
def test_chat_jsonl_rows_are_read_and_bad_rows_named(tmp_path):
    from xtok_core.distill.chat_data import ChatBatches, is_chat_data, read_chat_data

    good = {"messages": CONVERSATIONS[0]}
    f = tmp_path / "chat.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [good, {"messages": CONVERSATIONS[2]}]) + "\n")
    assert is_chat_data(f) and is_chat_data("chat") and not is_chat_data(tmp_path / "x.txt")
    convs, names = read_chat_data(f)
    assert convs == [CONVERSATIONS[0], CONVERSATIONS[2]] and names == ["chat.jsonl row 1", "chat.jsonl row 2"]
    b = ChatBatches(f, batch_size=3, seed=0)
    assert b(0) == ChatBatches(f, batch_size=3, seed=0)(0) and len(b(0)[0]) == 3
    for row, what in [({"messages": []}, "empty list"), ({"text": "hi"}, "no 'messages'"),
                      ({"messages": [{"role": "user", "content": "Hi"}]}, "no assistant turn"),
                      ({"messages": [{"role": "user", "content": {"a": 1}}]}, "dict content")]:
        f.write_text(json.dumps(good) + "\n\n" + json.dumps(row) + "\n")
        with pytest.raises(XtokError) as e:
            read_chat_data(f)
        assert str(e.value).startswith("chat.jsonl row 3:") and what in str(e.value)
    f.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(XtokError, match="chat.jsonl row 2: not valid JSON"):
        read_chat_data(f)


def test_one_cut_is_shared_by_the_student_and_every_teacher(chat_tok):
    long = [{"role": "user", "content": f"Question {k}: what is {k}1 + {k}2, and why?"} if i % 2 == 0 else
            {"role": "assistant", "content": f"{k}1 + {k}2 = {int(f'{k}1') + int(f'{k}2')}."}
            for k in range(5) for i in range(2)]
    toks = [chat_tok("llama-3.2"), chat_tok("qwen2.5"), chat_tok("phi-3-mini")]
    lengths = [len(C.render_chat(long, t).ids) for t in toks]
    limit = max(lengths) - 10
    (cut,), rows = C.fit_conversations([long], toks, limit)
    assert rows == [0] and cut == long[len(long) - len(cut):] and cut[0]["role"] == "user"
    assert all(len(C.render_chat(cut, t).ids) <= limit for t in toks)
    one_more = long[len(long) - len(cut) - 2:]
    assert any(len(C.render_chat(one_more, t).ids) > limit for t in toks)   # the cut is the smallest that fits


def test_a_chat_step_trains_on_assistant_tokens_and_the_teacher_reads_its_own_template(tmp_path, chat_tok, projection):
    from xtok_core.distill.chat_data import ChatBatches, chat_step
    from xtok_core.losses import DistillLoss, TeacherTerm
    from xtok_core.models import build_tiny

    student = build_tiny("tiny:llama-3.2", dim=32, layers=1, seed=0)
    teacher = build_tiny("tiny:qwen2.5", dim=32, layers=1, seed=1)
    f = tmp_path / "chat.jsonl"
    f.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS))
    torch.manual_seed(0)
    st = chat_step(ChatBatches(f, batch_size=3, seed=0), 0, student, [teacher],
                   same_tokenizer=lambda a, b: a.tok.sha256 == b.tok.sha256, n_on_policy=1, max_length=256,
                   loss_on="assistant", max_new_tokens=8)
    al = st.alignments[0]
    assert st.n_sampled == 1 and st.rows == [0, 1, 2]
    # CE: nothing on the student's own sample, the assistant tokens of the others
    assert (st.labels[0] == -100).all()
    for r in (1, 2):
        tgt = al.student_target[r]
        assert (st.labels[r][tgt] == st.student_ids[r][tgt]).all() and (st.labels[r][~tgt] == -100).all()
    # the sampled row: the teacher reads its own template around the student's text
    sampled = st.conversations[0]
    t_chat = al.teacher_chats[0]
    assert t_chat.text == C.render_chat(sampled, chat_tok("qwen2.5")).text
    assert t_chat.text.startswith("<|im_start|>system\n") and t_chat.text.endswith("<|im_end|>\n")
    n_t = len(t_chat.ids)
    assert al.teacher_ids[0, :n_t].tolist() == t_chat.ids.tolist()
    # the loss runs on these tensors: KD pairs only where the masks say
    W = projection("llama-3.2", "qwen2.5", student_vocab_size=student.vocab_size, teacher_vocab_size=teacher.vocab_size)
    loss_fn = DistillLoss([TeacherTerm(W=W)])
    with torch.no_grad():
        zs = student.model(input_ids=st.student_ids, attention_mask=st.student_mask.long()).logits
        zt = teacher.model(input_ids=al.teacher_ids, attention_mask=al.teacher_mask.long()).logits
    loss, stats = loss_fn(zs, zt, al, input_ids=st.student_ids, attention_mask=st.student_mask, labels=st.labels)
    assert torch.isfinite(loss) and stats["pairs/teacher0"] == float(al.kd_target.sum())


# ----------------------------------------------------------------------------- runs on conversations
def _chat_run_config(data, **kw):
    from xtok_core.distill import DistillConfig

    base = dict(student="tiny:llama-3.2", teachers=["tiny:qwen2.5"], train_demo_teacher=False, data=str(data),
                steps=2, batch_size=3, seq_len=160, tiny_dim=32, tiny_layers=1, eval_every=0, checkpoint_every=50,
                warmup=1, on_policy_ratio=0.34, max_new_tokens=6, device="cpu", heldout_fraction=0.0)
    return DistillConfig(**{**base, **kw})


@pytest.mark.slow
def test_a_run_trains_on_conversations_with_kd_only_on_assistant_pairs(tmp_path):
    from xtok_core.distill import run_distillation

    f = tmp_path / "chat.jsonl"
    f.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS))
    res = run_distillation(_chat_run_config(f), tmp_path / "run", progress=False, log=lambda *a: None)
    assert res.state == "finished" and len(res.metrics) == 2
    for row in res.metrics:
        assert np.isfinite(row["loss"]) and row["pairs/t0"] > 0
    # the same batch aligned by hand: KD pairs are the assistant groups, fewer than with --loss-on all
    from xtok_core.distill.chat_data import ChatBatches

    convs, _ = ChatBatches(f, batch_size=3, seed=0)(0)
    assistant = int(C.align_chat_batch(convs, "llama-3.2", "qwen2.5").kd_target.sum())
    everything = int(C.align_chat_batch(convs, "llama-3.2", "qwen2.5", loss_on="all").kd_target.sum())
    assert 0 < assistant < everything
    res_all = run_distillation(_chat_run_config(f, loss_on="all", on_policy_ratio=0.0, steps=1), tmp_path / "all",
                               progress=False, log=lambda *a: None)
    res_off = run_distillation(_chat_run_config(f, on_policy_ratio=0.0, steps=1), tmp_path / "off",
                               progress=False, log=lambda *a: None)
    assert res_all.metrics[0]["pairs/t0"] == everything and res_off.metrics[0]["pairs/t0"] == assistant


def test_a_run_on_conversations_needs_every_model_to_have_a_template(tmp_path):
    from xtok_core.distill import run_distillation

    cfg = _chat_run_config("chat", student="tiny:gpt2", steps=1)
    with pytest.raises(XtokError, match=r"tiny:gpt2 .* no chat template.*--chat-template FILE") as e:
        run_distillation(cfg, tmp_path / "run", progress=False, log=lambda *a: None)
    assert "\n" not in str(e.value)
    t = tmp_path / "plain.jinja"
    t.write_text("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + eos_token + '\n' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    res = run_distillation(cfg.replace(chat_template=str(t), on_policy_ratio=0.0, eval_every=1, eval_size=4),
                           tmp_path / "run2", progress=False, log=lambda *a: None)
    assert res.state == "finished" and res.metrics[0]["pairs/t0"] > 0
    assert np.isfinite(res.metrics[0]["eval_ce"])   # held out: the chat set's eval split, as plain content


def test_held_out_conversations_are_never_trained_on(tmp_path):
    from xtok_core.distill.chat_data import ChatBatches, chat_heldout_texts, split_chat_data

    convs = chat_set("train")[:60]
    f = tmp_path / "chat.jsonl"
    f.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
    train, names, held = split_chat_data(f, 0.2)
    assert held and len(train) + len(held) == 60 and not [c for c in held if c in train]
    assert split_chat_data(f, 0.2)[2] == held    # the hash decides, not the order or the seed
    f2 = tmp_path / "reversed.jsonl"
    f2.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs[::-1]))
    assert sorted(map(str, split_chat_data(f2, 0.2, seed=5)[2])) == sorted(map(str, held))
    seen = [c for s in range(40) for c in ChatBatches(f, batch_size=3, seed=0, heldout_fraction=0.2)(s)[0]]
    assert not [c for c in held if c in seen]
    assert chat_heldout_texts(f, 0.2)[0] == "\n\n".join(m["content"] for m in held[0])
    assert split_chat_data("chat")[2] == chat_set("eval")
