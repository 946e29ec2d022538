"""Claims: splitting clinical text, evidence per claim, and support checked by removal."""

from __future__ import annotations

import pytest
import torch

from engine.claims import THRESHOLD, find_claims, leave_one_out, segment
from engine.errors import InvalidInputError
from engine.explain import ExplainRequest, explain
from engine.models import ModelRequest, load_model
from engine.record import Explanation
from engine.sentences import split_claims, split_sentences


def _pieces(text, split=split_sentences):
    return [text[start:end] for start, end in split(text)]


@pytest.mark.parametrize(("text", "expected"), [
    ("Dr. Smith found a 2.3 cm mass, e.g. in the left breast. Ki-67 is 60%.",
     ["Dr. Smith found a 2.3 cm mass, e.g. in the left breast.", "Ki-67 is 60%."]),
    ("Seen by J. Doe on 3.4.2024. Staging CT shows no distant disease.",
     ["Seen by J. Doe on 3.4.2024.", "Staging CT shows no distant disease."]),
    ("Plan:\n1. Neoadjuvant chemotherapy\n2. Surgery\n- genetic counselling",
     ["Plan:", "1. Neoadjuvant chemotherapy", "2. Surgery", "- genetic counselling"]),
    ("Next: 1) chemotherapy 2) surgery 3) radiotherapy.",
     ["Next:", "1) chemotherapy", "2) surgery", "3) radiotherapy."]),
    ("Invasive carcinoma (grade 3) is present. Stage 2. Dose b.i.d. for 5 days i.e. a week.",
     ["Invasive carcinoma (grade 3) is present.", "Stage 2.",
      "Dose b.i.d. for 5 days i.e. a week."]),
    ("Is it HER2 positive? No! Re-test.", ["Is it HER2 positive?", "No!", "Re-test."]),
    ("  \n", []),
    # Scripts whose sentence ends take no space after them: one "sentence" before.
    ("患者为58岁女性，乳腺癌。ER阳性，HER2阴性。下一步治疗是什么？",
     ["患者为58岁女性，乳腺癌。", "ER阳性，HER2阴性。", "下一步治疗是什么？"]),
    ("58 वर्षीय महिला। ER पॉजिटिव। अगला कदम क्या है?",
     ["58 वर्षीय महिला।", "ER पॉजिटिव।", "अगला कदम क्या है?"]),
    ("هل هو إيجابي؟ نعم", ["هل هو إيجابي؟", "نعم"]),
])
def test_clinical_text_splits_into_sentences(text, expected):
    assert _pieces(text) == expected


def test_claims_split_sentences_again_at_semicolons():
    answer = ("Neoadjuvant chemotherapy is recommended; genetic counselling is advised because "
              "of the family history. Surgery follows, e.g. a mastectomy.")
    assert _pieces(answer, split_claims) == [
        "Neoadjuvant chemotherapy is recommended;",
        "genetic counselling is advised because of the family history.",
        "Surgery follows, e.g. a mastectomy."]


CASE = "52 year old woman . ER positive , HER2 negative . left breast mass 2 cm ."


@pytest.fixture(scope="module")
def tiny(tiny_model_folder):
    loaded = load_model(ModelRequest(str(tiny_model_folder)))
    record = explain(ExplainRequest(CASE, max_new_tokens=6, matrix=False, method="ifr",
                                    target="ER positive . breast mass 2 cm"), loaded)
    return loaded, record


def test_segments_cover_the_case_and_the_answer(tiny):
    _, record = tiny
    parts = segment(record)
    assert [CASE[a:b] for a, b in parts.sentences] == [
        "52 year old woman .", "ER positive , HER2 negative .", "left breast mass 2 cm ."]
    # The sentences' tokens run from the case's first token to its last, in order, each once.
    case_tokens = [i for i, keep in enumerate(record.prompt.attributable) if keep]
    covered = [i for a, b in parts.sentence_tokens for i in range(a, b)]
    assert covered == list(range(case_tokens[0], case_tokens[-1] + 1))
    assert parts.claim_texts == ("ER positive .", "breast mass 2 cm")
    assert parts.claims == ((0, 3), (3, len(record.answer.token_ids)))


def test_leaving_a_sentence_out_on_the_cached_prefix_equals_a_fresh_forward(tiny):
    loaded, record = tiny
    parts, falls = leave_one_out(loaded.model, record)
    prompt = torch.tensor(record.prompt.token_ids)
    answer = torch.tensor(record.answer.token_ids)

    def fresh(ids):  # one whole forward, no cache: log p of each answer token
        with torch.no_grad():
            logits = loaded.model(torch.cat([ids, answer[:-1]]).view(1, -1)).logits[0]
        logp = torch.log_softmax(logits[-len(answer):].double(), -1)
        return logp.gather(-1, answer.view(-1, 1)).squeeze(-1)

    full = fresh(prompt)
    for s, (a, b) in enumerate(parts.sentence_tokens):
        shortened = fresh(torch.cat([prompt[:a], prompt[b:]]))
        for c, (first, end) in enumerate(parts.claims):
            expected = float(full[first:end].sum() - shortened[first:end].sum())
            assert falls[c, s].item() == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("method", ["auto", "ifr", "input-x-gradient"])
def test_claims_record_their_evidence_and_support_and_round_trip(tiny, tmp_path, method):
    loaded, record = tiny
    claims = find_claims(loaded.model, loaded.tokenizer, record, method=method)
    assert claims.threshold == pytest.approx(THRESHOLD)
    assert claims.evidence_method == ("leave-one-out" if method == "auto" else method)
    parts, falls = leave_one_out(loaded.model, record)
    prompt = torch.tensor(record.prompt.token_ids)
    answer = torch.tensor(record.answer.token_ids)
    first_case, last_case = parts.sentence_tokens[0][0], parts.sentence_tokens[-1][1]
    without_case = torch.cat([prompt[:first_case], prompt[last_case:], answer[:-1]])
    with torch.no_grad():  # a fresh forward over the prompt with every case sentence removed
        logits = loaded.model(without_case.view(1, -1)).logits[0, -len(answer):]
    bare = torch.log_softmax(logits.double(), -1).gather(-1, answer.view(-1, 1)).squeeze(-1)
    for c, claim in enumerate(claims.claims):
        if method == "auto":  # the evidence is the leave-one-out falls' positive shares
            positive = falls[c].clamp(min=0)
            assert claim.evidence == pytest.approx((positive / positive.sum()).tolist())
        assert sum(claim.evidence) == pytest.approx(1.0)
        assert len(claim.drops) == min(3, sum(e > 0 for e in claim.evidence))
        for sentence, drop in claim.drops:  # the batched removals agree with the reference
            assert drop == pytest.approx(falls[c, sentence].item(), abs=1e-4)
        first, end = claim.tokens
        expected = (claim.log_prob - float(bare[first:end].sum())) / (end - first)
        assert claim.support == pytest.approx(expected, abs=1e-4)
        assert claim.grounded == (claim.support >= THRESHOLD)
    from dataclasses import replace

    with_claims = replace(record, claims=claims)
    path = tmp_path / "r.json"
    with_claims.save(path)
    assert Explanation.load(path) == with_claims


def test_claims_with_spans_beyond_the_case_or_answer_are_refused_on_load(tiny):
    from dataclasses import replace

    loaded, record = tiny
    data = replace(record, claims=find_claims(loaded.model, loaded.tokenizer, record)).to_dict()
    data["claims"]["sentences"][0] = [0, 10**6]
    with pytest.raises(InvalidInputError, match="outside the case"):
        Explanation.from_dict(data)
    data = replace(record, claims=find_claims(loaded.model, loaded.tokenizer, record)).to_dict()
    data["claims"]["claims"][0]["tokens"] = [0, 99]
    with pytest.raises(InvalidInputError, match="beyond the answer"):
        Explanation.from_dict(data)
    for threshold in (float("nan"), float("inf"), -1.0, 0.0, 1000.0):
        data = replace(record, claims=find_claims(loaded.model, loaded.tokenizer,
                                                  record)).to_dict()
        data["claims"]["threshold"] = threshold
        with pytest.raises(InvalidInputError, match="threshold, time or candidates are out"):
            Explanation.from_dict(data)
    # A claim's text, evidence and candidates are checked too (before: a claim reading "HER2
    # positive: give trastuzumab" opened with a tick, evidence of 750%, "its top -5 sentences").
    for edit, message in (
            (lambda c: c["claims"][0].update(text="HER2 positive: give trastuzumab"),
             "not part of the answer"),
            (lambda c: c["claims"][0].update(evidence=[7.5, *c["claims"][0]["evidence"][1:]]),
             "not shares"),
            (lambda c: c.update(candidates=-5), "candidates are out of range"),
            (lambda c: c.update(seconds=1e300), "candidates are out of range")):
        data = replace(record, claims=find_claims(loaded.model, loaded.tokenizer,
                                                  record)).to_dict()
        edit(data["claims"])
        with pytest.raises(InvalidInputError, match=message):
            Explanation.from_dict(data)


def test_an_opened_claim_s_flag_follows_its_support(tiny):
    # As the reliability verdict: a file edited to say a claim rests on the case (or does
    # not) reads as its support and threshold say.
    from dataclasses import replace

    loaded, record = tiny
    claims = find_claims(loaded.model, loaded.tokenizer, record)
    data = replace(record, claims=claims).to_dict()
    for claim in data["claims"]["claims"]:
        claim["grounded"] = not claim["grounded"]
    opened = Explanation.from_dict(data).claims
    assert [c.grounded for c in opened.claims] == [c.grounded for c in claims.claims]
    assert all(c.grounded == (c.support >= claims.threshold) for c in opened.claims)


@pytest.mark.parametrize("method", ["auto", "ifr"])
def test_claims_report_progress_in_order_and_cancel(tiny, method):
    from engine.errors import Cancelled
    from engine.task import TaskState

    loaded, record = tiny

    class Progress(TaskState):
        def __init__(self, cancel_at=None):
            super().__init__()
            self.seen, self.cancel_at = [], cancel_at

        def progressed(self, stage, done, total):
            if stage == "claims":
                self.seen.append((done, total))
                if self.cancel_at is not None and done >= self.cancel_at:
                    self.cancel()

    state = Progress()
    find_claims(loaded.model, loaded.tokenizer, record, method=method, state=state)
    steps = len(segment(record).claims) + 1
    assert all(total == steps for _, total in state.seen)
    done = [d for d, _ in state.seen]
    assert done == sorted(done) and done[-1] == steps
    with pytest.raises(Cancelled):
        find_claims(loaded.model, loaded.tokenizer, record, method=method,
                    state=Progress(cancel_at=1))
