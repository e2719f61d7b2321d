"""VQA accuracy exactly as the official VQA evaluation (Antol et al. 2015; VQAv2, Goyal et al. 2017).

Rules reproduced, including their quirks, so our numbers equal the leaderboard's:
* the result answer: newlines/tabs to spaces, strip, punctuation rule, then lower-case,
  number words to digits, articles dropped, apostrophe-less contractions restored;
* ground-truth answers get the punctuation rule only, and only when annotators disagree;
* a punctuation mark is deleted if it touches a space anywhere in the text (or the text
  has a digit-comma-digit), otherwise replaced by a space; periods not before a digit are
  removed — at most 32 of them (the official code passes ``re.UNICODE`` as the count);
* accuracy of a question = mean over the 10 leave-one-annotator-out subsets of
  min(1, #matching answers among the other 9 / 3), where "other" excludes every
  answer record equal to the held-out one;
* overall / per question type / per answer type are means, x100, rounded to 2 decimals.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping

from mmllm.errors import DataError

_CONTRACTIONS_TABLE = """
aint ain't|arent aren't|cant can't|couldve could've|couldnt couldn't|couldn'tve couldn't've
couldnt've couldn't've|didnt didn't|doesnt doesn't|dont don't|hadnt hadn't|hadnt've hadn't've
hadn'tve hadn't've|hasnt hasn't|havent haven't|hed he'd|hed've he'd've|he'dve he'd've|hes he's
howd how'd|howll how'll|hows how's|Id've I'd've|I'dve I'd've|Im I'm|Ive I've|isnt isn't|itd it'd
itd've it'd've|it'dve it'd've|itll it'll|let's let's|maam ma'am|mightnt mightn't
mightnt've mightn't've|mightn'tve mightn't've|mightve might've|mustnt mustn't|mustve must've
neednt needn't|notve not've|oclock o'clock|oughtnt oughtn't|ow's'at 'ow's'at|'ows'at 'ow's'at
'ow'sat 'ow's'at|shant shan't|shed've she'd've|she'dve she'd've|she's she's|shouldve should've
shouldnt shouldn't|shouldnt've shouldn't've|shouldn'tve shouldn't've|somebody'd somebodyd
somebodyd've somebody'd've|somebody'dve somebody'd've|somebodyll somebody'll|somebodys somebody's
someoned someone'd|someoned've someone'd've|someone'dve someone'd've|someonell someone'll
someones someone's|somethingd something'd|somethingd've something'd've|something'dve something'd've
somethingll something'll|thats that's|thered there'd|thered've there'd've|there'dve there'd've
therere there're|theres there's|theyd they'd|theyd've they'd've|they'dve they'd've|theyll they'll
theyre they're|theyve they've|twas 'twas|wasnt wasn't|wed've we'd've|we'dve we'd've|weve we've
werent weren't|whatll what'll|whatre what're|whats what's|whatve what've|whens when's|whered where'd
wheres where's|whereve where've|whod who'd|whod've who'd've|who'dve who'd've|wholl who'll|whos who's
whove who've|whyll why'll|whyre why're|whys why's|wont won't|wouldve would've|wouldnt wouldn't
wouldnt've wouldn't've|wouldn'tve wouldn't've|yall y'all|yall'll y'all'll|y'allll y'all'll
yall'd've y'all'd've|y'alld've y'all'd've|y'all'dve y'all'd've|youd you'd|youd've you'd've
you'dve you'd've|youll you'll|youre you're|youve you've
"""
CONTRACTIONS = dict(pair.split(" ") for pair in _CONTRACTIONS_TABLE.replace("\n", "|").split("|") if pair.strip())
NUMBER_WORDS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
NUMBER_WORDS["none"] = "0"
ARTICLES = {"a", "an", "the"}
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: the official pattern is a look-ahead, not a look-behind
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_OFFICIAL_PERIOD_COUNT = int(re.UNICODE)  # = 32, see module docstring


def process_punctuation(text: str) -> str:
    out = text
    has_digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in PUNCTUATION:
        if mark + " " in text or " " + mark in text or has_digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=_OFFICIAL_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """The full normalisation applied to a result answer (and to answers for the vocabulary)."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def question_accuracy(result_answer: str, gt_answers: list[Mapping]) -> float:
    """Accuracy in [0, 1] of one answer against the annotators' answer records."""
    answer = normalize_answer(result_answer)
    records = [dict(r) for r in gt_answers]
    if not records:
        raise DataError("no annotator answer to score against (answers: [])")
    if len({r["answer"] for r in records}) > 1:
        for r in records:
            r["answer"] = process_punctuation(r["answer"])
    scores = []
    for held_out in records:
        matches = sum(1 for r in records if r != held_out and r["answer"] == answer)
        scores.append(min(1.0, matches / 3))
    return sum(scores) / len(scores)


def _check_annotation(ann: object, n: int, source: str) -> None:
    """One VQAv2 annotation record, with errors naming the file and the question id."""
    if not isinstance(ann, Mapping):
        raise DataError(f"{source}: annotation {n} is not a record: {ann!r}")
    qid = ann.get("question_id")
    if not isinstance(qid, int) or isinstance(qid, bool):
        raise DataError(f"{source}: annotation {n} has question_id {qid!r}, expected an int")
    for key in ("question_type", "answer_type"):
        if not isinstance(ann.get(key), str):
            raise DataError(f"{source}: question {qid}: {key} is {ann.get(key)!r}, expected a string")
    answers = ann.get("answers")
    if not isinstance(answers, list) or not answers:
        raise DataError(
            f"{source}: question {qid}: answers is {answers!r}, expected a non-empty list of "
            "annotator records (VQAv2 has 10)"
        )
    for a in answers:
        if not isinstance(a, Mapping) or not isinstance(a.get("answer"), str):
            raise DataError(f"{source}: question {qid}: annotator record {a!r} has no string 'answer'")


def evaluate(annotations: Iterable[Mapping], results: Mapping[int, str], source: str = "annotations") -> dict:
    """Official-format accuracy: ``annotations`` are VQAv2 annotation records, ``results`` question_id -> answer.

    As in the official API (``VQA.loadRes`` asserts ``set(resQuesIds) == set(self.getQuesIds())``), the
    results must answer exactly the annotated questions; a question annotated twice would be counted
    twice, so it is refused too. ``source`` (the annotation file) names the input in errors.
    """
    anns = list(annotations)
    if not anns:
        raise DataError(f"{source}: no annotated question to evaluate")
    seen: set[int] = set()
    duplicated: list[int] = []
    for n, ann in enumerate(anns):
        _check_annotation(ann, n, source)
        if ann["question_id"] in seen:
            duplicated.append(ann["question_id"])
        seen.add(ann["question_id"])
    if duplicated:
        raise DataError(
            f"{source}: {len(duplicated)} duplicated annotation record(s), e.g. question(s) "
            f"{sorted(set(duplicated))[:5]}: each question must be annotated once"
        )
    missing = sorted(seen - set(results))
    if missing:
        raise DataError(f"{len(missing)} annotated question(s) of {source} have no result, e.g. {missing[:5]}")
    unannotated = sorted(set(results) - seen, key=str)
    if unannotated:
        raise DataError(
            f"{len(unannotated)} result(s) answer questions not annotated in {source}, e.g. {unannotated[:5]}"
        )
    overall: list[float] = []
    per_q: dict[str, list[float]] = defaultdict(list)
    per_a: dict[str, list[float]] = defaultdict(list)
    for ann in anns:
        qid = ann["question_id"]
        if not isinstance(results[qid], str):
            raise DataError(f"the result for question {qid} is {results[qid]!r}, expected a string")
        acc = question_accuracy(results[qid], ann["answers"])
        overall.append(acc)
        per_q[ann["question_type"]].append(acc)
        per_a[ann["answer_type"]].append(acc)
    pct = lambda xs: round(100 * float(sum(xs)) / len(xs), 2)  # noqa: E731
    return {
        "overall": pct(overall),
        "perQuestionType": {k: pct(v) for k, v in per_q.items()},
        "perAnswerType": {k: pct(v) for k, v in per_a.items()},
    }
