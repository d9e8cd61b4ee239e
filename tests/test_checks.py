"""Chat-task rules (cdscale/tasks/checks.py): every kind on hand-written responses that pass
and fail it, the word and sentence counts, the language detector, and a one-line CheckError
naming the place for every kind of bad config."""

import pytest

from cdscale.tasks.checks import (
    KINDS,
    Check,
    CheckError,
    count_sentences,
    count_words,
    detect_language,
    parse_checks,
)

TEN_WORDS = "one two three four five six seven eight nine ten"


@pytest.mark.parametrize(
    "rule,response,passes",
    [
        ({"language": "fr"}, "Bonjour, je suis très content de vous voir.", True),
        ({"language": "fr"}, "La capitale de la France est Paris.", True),
        ({"language": "fr"}, "Hello, I am very happy to see you.", False),
        ({"language": "fr"}, "Hola, yo estoy muy contento de verte.", False),
        ({"language": "es"}, "La capital de Francia es París.", True),
        ({"language": "en"}, "Paris is the capital of France.", True),
        ({"language": "de"}, "Die Hauptstadt von Frankreich ist Paris.", True),
        ({"language": "it"}, "La capitale della Francia è Parigi.", True),
        ({"language": "pt"}, "A capital da França é Paris.", True),
        ({"starts_with": "Ahoy!"}, "  \nAhoy! Welcome aboard.", True),
        ({"starts_with": "Ahoy!"}, "Hello", False),
        ({"starts_with": "Ahoy!"}, "ahoy! Welcome aboard.", False),  # case-sensitive
        ({"ends_with": ":)"}, "Have a nice day :)  \n", True),
        ({"ends_with": ":)"}, ":) Have a nice day", False),
        ({"regex": r"(?i)\b(arr+|matey|ye)\b"}, "Arrr, ye scallywag!", True),
        ({"regex": r"(?i)\b(arr+|matey|ye)\b"}, "Yes, my friend.", False),
        ({"not_regex": "(?i)^hello"}, "Bonjour !", True),
        ({"not_regex": "(?i)^hello"}, "Hello there.", False),
        ({"max_words": 10}, TEN_WORDS, True),
        ({"max_words": 10}, TEN_WORDS + " eleven", False),
        ({"min_words": 3}, "Don't stop now", True),
        ({"min_words": 3}, "Don't stop", False),  # "don't" is one word
        ({"max_sentences": 2}, "Hi. How are you?", True),
        ({"max_sentences": 2}, "Hi. How are you? Fine!", False),
        ({"min_sentences": 1}, "Version 2.5 is out", True),
        ({"min_sentences": 1}, "...", False),
        ({"valid_json": True}, ' {"a": 1}\n', True),
        ({"valid_json": True}, '```json\n{"a": [1, 2]}\n```', True),
        ({"valid_json": True}, "```\n[1, 2]\n```", True),
        ({"valid_json": True}, "not json", False),
        ({"valid_json": True}, 'Here it is: {"a": 1}', False),
        ({"valid_json": True}, '```json\n{"a": 1}\n```\nDone!', False),
    ],
)
def test_each_kind_passes_and_fails(rule, response, passes):
    (check,) = parse_checks([{"name": "rule", **rule}])
    assert check.passes(response) is passes


@pytest.mark.parametrize("response", ["", "  \n\t"])
@pytest.mark.parametrize(
    "rule",
    [
        {"language": "en"},
        {"starts_with": "A"},
        {"ends_with": "A"},
        {"regex": ".*"},  # matches the empty string, still fails
        {"not_regex": "^$"},  # matches the empty string, still passes
        {"max_words": 0},
        {"min_words": 0},
        {"max_sentences": 0},
        {"min_sentences": 0},
        {"valid_json": True},
    ],
)
def test_an_empty_response_passes_only_the_upper_bounds_and_not_regex(rule, response):
    (check,) = parse_checks([{"name": "rule", **rule}])
    assert check.passes(response) is (check.kind in ("max_words", "max_sentences", "not_regex"))


@pytest.mark.parametrize(
    "text,words,sentences",
    [
        ("Hi. How are you? Fine!", 5, 3),
        ("Version 2.5 is out.", 5, 1),  # "2.5" is two words, but no sentence ends inside it
        ("Wait... what?! Really…", 3, 3),
        ("I'm here — aren’t you", 4, 1),  # both apostrophes keep a word whole
        ("", 0, 0),
        ("?!", 0, 0),
    ],
)
def test_word_and_sentence_counts(text, words, sentences):
    assert (count_words(text), count_sentences(text)) == (words, sentences)


@pytest.mark.parametrize(
    "text,language",
    [
        ("I don't know, but I think it will rain.", "en"),
        ("Je ne sais pas, mais je pense qu'il va pleuvoir.", "fr"),
        ("No sé, pero creo que va a llover.", "es"),
        ("Ich weiß es nicht, aber ich glaube, es wird regnen.", "de"),
        ("Non lo so, ma penso che pioverà.", "it"),
        ("Não sei, mas acho que vai chover.", "pt"),
        ("C'est une bonne idée !", "fr"),  # the elided c' counts
        ("Merci beaucoup", None),  # under 3 words
        ("Ahoy! Welcome aboard.", None),  # no function words at all
        ("de la que", None),  # only words French and Spanish share: a tie
        ("print(x + 1)", None),
    ],
)
def test_detect_language(text, language):
    assert detect_language(text) == language


def test_parse_keeps_order_names_and_values():
    checks = parse_checks(
        [{"name": "french", "language": "fr"}, {"name": "short", "max_words": 10}, {"name": "json", "valid_json": True}]
    )
    assert [(c.name, c.kind, c.value) for c in checks] == [
        ("french", "language", "fr"),
        ("short", "max_words", 10),
        ("json", "valid_json", True),
    ]
    assert parse_checks([]) == []
    assert len(KINDS) == 10 and "not_regex" in KINDS


def ok(name="ok"):
    return {"name": name, "min_words": 1}


@pytest.mark.parametrize(
    "raw,fragments",
    [
        ({"name": "x", "max_words": 3}, ["task.options.checks:", "list", "dict"]),
        ([ok(), "french"], ["checks[1]", "mapping", "str"]),
        ([{"language": "fr"}], ["checks[0].name", "'name'"]),
        ([{"name": 3, "language": "fr"}], ["checks[0].name", "non-empty string", "3"]),
        ([{"name": " ", "language": "fr"}], ["checks[0].name", "non-empty string"]),
        ([ok("a"), ok("b"), ok("a")], ["checks[2].name", "duplicate", "'a'", "checks[0]"]),
        ([ok(), {"name": "b"}], ["checks[1]", "none", "kinds: language, starts_with"]),
        ([{"name": "b", "regex": "x", "max_words": 3}], ["checks[0]", "'regex', 'max_words'", "kinds:"]),
        ([{"name": "b", "languag": "fr"}], ["checks[0]", "unknown key 'languag'", "language"]),
        ([{"name": "b", "regex": 3}], ["checks[0].regex", "pattern string", "int"]),
        ([ok(), {"name": "b", "not_regex": "(abc"}], ["checks[1].not_regex", "'(abc'", "missing )"]),
        ([{"name": "b", "regex": "a{2,1}"}], ["checks[0].regex", "min repeat greater than max"]),
        ([{"name": "b", "max_words": True}], ["checks[0].max_words", "non-negative integer", "True"]),
        ([{"name": "b", "min_words": -1}], ["checks[0].min_words", "-1"]),
        ([{"name": "b", "max_sentences": 2.5}], ["checks[0].max_sentences", "2.5"]),
        ([{"name": "b", "min_sentences": "3"}], ["checks[0].min_sentences", "'3'"]),
        ([{"name": "b", "valid_json": False}], ["checks[0].valid_json", "must be true", "False"]),
        ([{"name": "b", "language": "xx"}], ["checks[0].language", "'xx'", "en, fr, es, de, it, pt"]),
        ([{"name": "b", "language": ["fr"]}], ["checks[0].language", "['fr']"]),
        ([{"name": "b", "starts_with": ""}], ["checks[0].starts_with", "non-empty string"]),
        ([{"name": "b", "ends_with": 7}], ["checks[0].ends_with", "7"]),
    ],
)
def test_bad_config_names_the_place_and_the_key(raw, fragments):
    with pytest.raises(CheckError) as err:
        parse_checks(raw)
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_the_place_prefix_is_the_callers():
    with pytest.raises(CheckError, match=r"^chat\.rules\[0\]\.max_words: "):
        parse_checks([{"name": "a", "max_words": -2}], where="chat.rules")


def test_a_check_built_directly_is_checked_too():
    with pytest.raises(CheckError, match="check 'a': regex: invalid pattern"):
        Check("a", "regex", "(")
    with pytest.raises(CheckError, match="unknown kind"):
        Check("a", "shouting", True)
    assert Check("a", "regex", "b+").passes("abba")
