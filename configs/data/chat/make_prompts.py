"""Write the user prompts of configs/system_prompt.yaml: `prompts.parquet` (everyday questions
and requests, the inputs a system prompt is baked on) and `drift.parquet` (short factual and
school questions, answered without any context, to see what else distillation changed).

Every prompt is written by this file (templates over topic lists), so the set is
reproducible and has no outside source:

    python configs/data/chat/make_prompts.py
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

TOPICS = [
    "the weather",
    "cooking pasta",
    "learning to swim",
    "growing tomatoes",
    "saving money",
    "a job interview",
    "training a puppy",
    "running a marathon",
    "reading more books",
    "learning the guitar",
    "moving to a new city",
    "planting a tree",
    "making coffee",
    "writing a poem",
    "painting a room",
    "going camping",
    "baking bread",
    "studying for an exam",
    "riding a bike",
    "taking photos",
    "keeping a diary",
    "visiting a museum",
    "cleaning the kitchen",
    "learning to drive",
    "making friends",
    "sleeping better",
    "drinking more water",
    "planning a birthday party",
    "starting a garden",
    "fixing a flat tire",
    "choosing a laptop",
    "washing a car",
    "feeding a cat",
    "learning to cook rice",
    "packing for a trip",
    "walking in the rain",
    "watching the stars",
    "building a sandcastle",
    "making soup",
    "learning a new language",
]
ASKS = [
    "What do you think about {t}?",
    "Can you give me one tip about {t}?",
    "Tell me something interesting about {t}.",
    "How should a beginner start with {t}?",
    "Why do people like {t}?",
    "What is the hardest part of {t}?",
    "Write two sentences about {t}.",
    "I need advice on {t}. Can you help?",
    "What mistakes do people make with {t}?",
    "Describe {t} to a child.",
    "Is {t} expensive?",
]
FREE = [
    "Hello! How are you today?",
    "What is your favourite season and why?",
    "Tell me a short story about a dog.",
    "What should I eat for dinner tonight?",
    "Can you recommend a good hobby?",
    "What makes a good friend?",
    "How do I stay calm before a test?",
    "What is the best way to spend a Sunday?",
    "Give me a fun fact.",
    "Describe the sea in a few words.",
    "What do you like about music?",
    "Tell me about the moon.",
    "How can I be more productive in the morning?",
    "What is a nice gift for my mother?",
    "Say something kind to me.",
    "What is the meaning of a good life?",
    "Describe a sunny day.",
    "Who are you?",
    "What can you do?",
    "Do you like animals?",
    "What is your name?",
    "Tell me a joke.",
    "How do I make a paper plane?",
    "What colour is the sky at sunset?",
    "Why is the ocean salty?",
    "What should I name my new cat?",
    "How do I say thank you politely?",
    "What is a healthy breakfast?",
    "Describe your perfect holiday.",
    "How do bees make honey?",
]
DRIFT = [
    ("What is {a} plus {b}?", [(a, b) for a, b in itertools.product([3, 7, 12, 25, 40], [4, 9, 16, 33])]),
    (
        "What is the capital of {a}?",
        [
            (c, None)
            for c in [
                "France",
                "Italy",
                "Japan",
                "Spain",
                "Germany",
                "Canada",
                "Egypt",
                "Brazil",
                "India",
                "Kenya",
                "Norway",
                "Peru",
            ]
        ],
    ),
    ("Spell the word '{a}' backwards.", [(w, None) for w in ["apple", "river", "stone", "light", "garden", "music"]]),
    ("Name an animal that starts with the letter {a}.", [(c, None) for c in "BCDFGHLMPRST"]),
    ("What is the opposite of '{a}'?", [(w, None) for w in ["hot", "big", "fast", "happy", "early", "light", "open"]]),
]


def prompts() -> list[str]:
    asked = [ask.format(t=topic) for topic, ask in itertools.product(TOPICS, ASKS)]
    picked = random.Random(0).sample(asked, 400)  # 400 of the 440, so no topic is asked every way
    return sorted(set(picked + FREE))


def drift() -> list[str]:
    return [template.format(a=a, b=b) for template, values in DRIFT for a, b in values]


def main() -> None:
    import pandas as pd

    here = Path(__file__).resolve().parent
    pd.DataFrame({"prompt": prompts()}).to_parquet(here / "prompts.parquet", index=False)
    pd.DataFrame({"prompt": drift()}).to_parquet(here / "drift.parquet", index=False)


if __name__ == "__main__":
    main()
