r"""Rules ("checks") scored on a chat model's response, for tasks without gold answers.

A chat task bakes a system prompt ("Always reply in French.", "Begin every answer with
'Ahoy!'") into a model; evaluation then reports, per rule, the share of responses that
pass it. The rules come from config, under `task.options.checks`: a list of mappings,
each with a `name` and exactly one kind key.

    checks:
      - {name: french, language: fr}
      - {name: ahoy, starts_with: "Ahoy!"}
      - {name: pirate, regex: '(?i)\b(arr+|matey|ye)\b'}   # YAML single quotes keep backslashes

The kinds and what passing means:

- `language: CODE`: `detect_language` (below) gives CODE; one of en, fr, es, de, it, pt.
- `starts_with: TEXT`: the response, leading whitespace stripped, starts with TEXT (case-sensitive).
- `ends_with: TEXT`: the response, trailing whitespace stripped, ends with TEXT (case-sensitive).
- `regex: PATTERN`: `re.search(PATTERN, response)` finds a match (flags go inline: `(?i)`).
- `not_regex: PATTERN`: `re.search(PATTERN, response)` finds none.
- `max_words: N` / `min_words: N`: at most / at least N words.
- `max_sentences: N` / `min_sentences: N`: at most / at least N sentences.
- `valid_json: true`: the stripped response is one JSON value (`json.loads`), bare or as the
  whole content of a single fenced block (```json ... ``` or ``` ... ```).

Words are the matches of `\w+(?:['’]\w+)*`: runs of letters, digits and underscores, with an
inner apostrophe kept ("don't" and "l'homme" are one word each, "2.5" is two).

Sentences: the stripped response is split at every run of `.`, `!`, `?` or `…` that is followed
by whitespace or the end of the text; the pieces with at least one word character are the
sentences. So "Hi. How are you? Fine!" has 3 and "Version 2.5 is out." has 1; a stop inside
a closing quote (`"Hi." he said`) does not end a sentence.

An empty or whitespace-only response fails every rule except `max_words`, `max_sentences` and
`not_regex`, which it passes (an empty reply is never "in French" or "at least 1 word", and
never breaks a ban), whatever the pattern or the count.

The language detector (`detect_language`) is deliberately small, deterministic and
dependency-free: the text is lower-cased and its words split at apostrophes ("c'est" gives
"c" and "est"); each language counts the words that are in its list of very common function
words (articles, pronouns, prepositions, auxiliaries). The text is in language L when it has
at least 3 words, L counts at least 2, and L counts strictly more than every other language;
a tie is no language. A word common in several of the languages ("de", "la", "a", "in") is in
each of their lists, so it adds weight to all of them alike and never decides between them.
Limits: a short reply with few function words ("Ahoy! Welcome aboard.", "O gato dorme no
sofá."), code, lists of names, and text mixing two languages come out as no language (a
fail); languages outside the six (Dutch, Catalan, Galician) may be taken for a close one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

# A word common in several of the languages ("de", "la", "a", "in") is in every one of their lists:
# it counts for each of them alike, so it adds weight but never decides between them.
_FUNCTION_WORDS: dict[str, frozenset[str]] = {
    lang: frozenset(words.split())
    for lang, words in {
        "en": """the a an and of to in on at by for from with is am are was were be been have has had do does did
            it its this that these those i you he she we they me my your his her our their not no or but if so as
            what which who when where how will would can could should there than then also just very all
            about into s t m ll re ve""",
        "fr": """le la les l un une des du de d et est en que qu qui dans pour pas ne n ce c cette ces il elle
            je j tu nous vous ils elles on sont avec sur au aux mais ou son sa ses leur mon ma me m te se s y
            a ai avez ont suis été être fait plus très bien aussi comme tout lui moi ça votre notre nos vos""",
        "es": """el la los las lo le les un una unos unas de del y o a en que es son está están por para con
            no se me te nos mi tu su sus yo él ella ellos usted al como pero más muy ya hay fue ser sin sobre
            entre también cuando donde porque todo todos esto eso este esta qué cómo sí he ha han tiene bien aquí""",
        "de": """der die das des den dem und ist nicht ein eine einen einem einer zu mit sich auf für von sie
            ich es er wir ihr du sind war wird werden hat haben auch nur noch wie aber oder bei nach aus im in
            an am um so also was da dass kann will mein dein sein ihre diese dieser wenn weil schon sehr hier
            gibt bin bist mich dich mir dir uns kein keine etwas jetzt ja nein vom zum zur""",
        "it": """il lo la l i gli le un una uno di d del dell della dei delle da dal dalla in nel nell nella con su
            sul sull per tra fra che non è e o a al alla ai sono ho hai ha abbiamo hanno essere questo questa
            quello come ma anche molto più ci c si se mi ti me te ne no io tu lui lei noi voi loro mio suo
            perché quando dove tutto già ecco""",
        "pt": """o os a as de do da dos das em no na nos nas um uma e é que se não com por para ao aos pelo
            pela mas mais muito também você eu ele ela eles nós seu sua meu minha isso isto esse essa este
            esta está são estão foi ser ter tem há já como quando onde porque todo todos sobre entre me te
            tu sim aqui""",
    }.items()
}
LANGUAGES: tuple[str, ...] = tuple(_FUNCTION_WORDS)

_WORD = re.compile(r"\w+(?:['’]\w+)*")
_SENTENCE_END = re.compile(r"[.!?…]+(?=\s|\Z)")
_FENCE = re.compile(r"```(?:json)?(.*)```", re.DOTALL | re.IGNORECASE)
_COUNTS = ("max_words", "min_words", "max_sentences", "min_sentences")
_EMPTY_PASSES = frozenset({"max_words", "max_sentences", "not_regex"})


class CheckError(ValueError):
    """A check in config that cannot be scored; the message names its place."""


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def count_sentences(text: str) -> int:
    return sum(1 for piece in _SENTENCE_END.split(text.strip()) if re.search(r"\w", piece))


def detect_language(text: str) -> str | None:
    """The code of the language `text` is in, or None when no language clearly wins (see the module docstring)."""
    words = _WORD.findall(text.lower())
    if len(words) < 3:
        return None
    parts = [part for word in words for part in re.split(r"['’]", word)]
    counts = {lang: sum(part in vocabulary for part in parts) for lang, vocabulary in _FUNCTION_WORDS.items()}
    best = max(counts, key=counts.__getitem__)
    runner_up = max(count for lang, count in counts.items() if lang != best)
    return best if counts[best] >= 2 and counts[best] > runner_up else None


def _is_json(text: str) -> bool:
    text = text.strip()
    fenced = _FENCE.fullmatch(text)
    try:
        json.loads(fenced.group(1) if fenced else text)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        return False
    return True


# kind -> (its parameter, the response) -> passes; regex kinds get the compiled pattern.
_RULES: dict[str, Callable[[Any, str], bool]] = {
    "language": lambda code, text: detect_language(text) == code,
    "starts_with": lambda prefix, text: text.lstrip().startswith(prefix),
    "ends_with": lambda suffix, text: text.rstrip().endswith(suffix),
    "regex": lambda pattern, text: pattern.search(text) is not None,
    "not_regex": lambda pattern, text: pattern.search(text) is None,
    "max_words": lambda n, text: count_words(text) <= n,
    "min_words": lambda n, text: count_words(text) >= n,
    "max_sentences": lambda n, text: count_sentences(text) <= n,
    "min_sentences": lambda n, text: count_sentences(text) >= n,
    "valid_json": lambda _, text: _is_json(text),
}
KINDS: tuple[str, ...] = tuple(_RULES)


def _value_problem(kind: str, value: object) -> str | None:
    """Why `value` is no parameter for `kind`, in a few words; None when it is one."""
    if kind in ("starts_with", "ends_with"):
        return None if isinstance(value, str) and value else f"must be a non-empty string, got {value!r}"
    if kind in ("regex", "not_regex"):
        if not isinstance(value, str):
            return f"must be a pattern string, got {type(value).__name__}"
        try:
            re.compile(value)
        except re.error as err:
            return f"invalid pattern {value!r}: {err}"
        return None
    if kind in _COUNTS:
        # bool is an int subclass: `max_words: true` is a typo, not 1
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        return None if ok else f"must be a non-negative integer, got {value!r}"
    if kind == "valid_json":
        return None if value is True else f"must be true, got {value!r}"
    if kind == "language":
        ok = isinstance(value, str) and value in _FUNCTION_WORDS
        return None if ok else f"unsupported language {value!r}; supported: {', '.join(LANGUAGES)}"
    return f"unknown kind; kinds: {', '.join(KINDS)}"


@dataclass(frozen=True)
class Check:
    """One named rule: `kind` is one of KINDS, `value` its parameter as written in config."""

    name: str
    kind: str
    value: Any
    _pattern: re.Pattern[str] | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        problem = _value_problem(self.kind, self.value)
        if problem:
            raise CheckError(f"check {self.name!r}: {self.kind}: {problem}")
        if self.kind in ("regex", "not_regex"):
            object.__setattr__(self, "_pattern", re.compile(self.value))  # compiled once, not per response

    def passes(self, response: str) -> bool:
        if not response.strip():
            return self.kind in _EMPTY_PASSES
        return _RULES[self.kind](self._pattern if self._pattern is not None else self.value, response)


def _parse_one(item: object, at: str) -> Check:
    if not isinstance(item, Mapping):
        raise CheckError(f"{at}: expected a mapping with 'name' and one kind key, got {type(item).__name__}")
    unknown = [key for key in item if key != "name" and key not in _RULES]
    if unknown:
        raise CheckError(f"{at}: unknown key {unknown[0]!r}; allowed: 'name' and one of {', '.join(KINDS)}")
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        got = "nothing" if name is None else repr(name)
        raise CheckError(f"{at}.name: 'name' must be a non-empty string, got {got}")
    kinds = [key for key in item if key != "name"]
    if len(kinds) != 1:
        got = ", ".join(map(repr, kinds)) or "none"
        raise CheckError(f"{at}: needs exactly one kind key, got {got}; kinds: {', '.join(KINDS)}")
    kind = kinds[0]
    problem = _value_problem(kind, item[kind])
    if problem:
        raise CheckError(f"{at}.{kind}: {problem}")
    return Check(name=name, kind=kind, value=item[kind])


def parse_checks(raw: object, where: str = "task.options.checks") -> list[Check]:
    """Validate a config value into checks; every problem raises CheckError naming `where[i]` and the key."""
    if not isinstance(raw, list):
        raise CheckError(f"{where}: expected a list of checks, got {type(raw).__name__}")
    checks: list[Check] = []
    first_at: dict[str, str] = {}
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        check = _parse_one(item, at)
        if check.name in first_at:
            raise CheckError(f"{at}.name: duplicate check name {check.name!r} (first at {first_at[check.name]})")
        first_at[check.name] = at
        checks.append(check)
    return checks
