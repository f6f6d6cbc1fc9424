#!/usr/bin/env python3
"""Make the local model's answers from which `visa-proxy calibrate-detector` fits the
detector's value gate and calibration:

- assets/detector/neutral-fit.jsonl: answers to the neutral prompts of
  assets/detector/neutral-prompts.txt, keeping only their complete sentences (of at least four
  words) that use none of the value words below (an answer about a refrigerator that mentions
  "safety" does express security): label "no value". Answers left with fewer than two such
  sentences are left out.
- assets/detector/valued-fit.jsonl: answers to the value-laden prompts of
  assets/detector/valued-prompts.txt, keeping only their sentences that do use a value word:
  label "some value", in the local model's own style (so the gate learns values, not style).

Each prompt is asked once, with greedy decoding and 200 tokens at most, of a running proxy with
the shipped config (the local SmolLM2 model):

  bash scripts/run.sh --listen 127.0.0.1:8099 &
  python3 scripts/make-neutral-fit.py http://127.0.0.1:8099 sk-visa-demo
"""
import json
import re
import sys
import urllib.request

# Words that express one of Schwartz's values in everyday English; a sentence with any of them
# is not kept as a neutral example.
VALUE_WORDS = """
free freedom freely choose choice choices independent independence creative creativity curious
explore own exciting excitement adventure thrill thrilling novel new daring challenge challenging
enjoy enjoyable enjoying pleasure pleasant delicious tasty treat indulge fun delight delightful satisfying
success successful succeed achieve achievement ambitious ambition goal goals excel excellent best win
winning competent impressive power powerful control wealth wealthy rich status dominate authority
prestige influence safe safely safety secure security protect protection risk risks danger dangerous
careful caution healthy health stable stability rule rules obey polite proper respect tradition
traditional custom customs heritage religion religious faith ancient culture help helpful helping
care caring kind kindness family friend friends love loyal honest support share environment
environmental nature natural planet sustainable fair fairness equal equality justice everyone world
tolerance peace community people important
""".split()
WORD = re.compile(r"[A-Za-z']+")
SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")


def ask(base, key, prompt):
    body = {"model": "demo", "temperature": 0, "max_tokens": 200,
            "messages": [{"role": "user", "content": prompt}]}
    req = urllib.request.Request(base + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"authorization": "Bearer " + key, "content-type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=600))["choices"][0]["message"]["content"]


def split_answer(text):
    kept, valued = [], []
    for s in SPLIT.split(text):
        s = s.strip()
        words = [w.lower() for w in WORD.findall(s)]
        if not s.endswith((".", "!", "?")) or len(words) < 4:
            continue
        if any(w in VALUE_WORDS for w in words):
            valued.append(s)
        else:
            kept.append(s)
    return kept, valued


def write(prompts_file, out_file, answers, neutral):
    prompts = [l.strip() for l in open(prompts_file) if l.strip()]
    kept = 0
    with open(out_file, "w") as out:
        for p in prompts:
            plain, valued = split_answer(answers(p))
            if neutral and len(plain) >= 2:
                out.write(json.dumps({"prompt": p, "text": " ".join(plain)}) + "\n")
                kept += 1
            elif not neutral and valued:
                out.write(json.dumps({"prompt": p, "text": " ".join(valued)}) + "\n")
                kept += 1
    print(f"{out_file}: {kept} of {len(prompts)} answers kept")


def main():
    base, key = sys.argv[1].rstrip("/"), sys.argv[2]
    answers = lambda p: ask(base, key, p)
    write("assets/detector/neutral-prompts.txt", "assets/detector/neutral-fit.jsonl", answers, True)
    write("assets/detector/valued-prompts.txt", "assets/detector/valued-fit.jsonl", answers, False)


if __name__ == "__main__":
    main()
