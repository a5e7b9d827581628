"""Generate the tiny offline demo data: learnable English/Chinese chat tasks and a tokenizer corpus.

Everything is produced from templates and a seeded RNG, so the same seed always gives the same files:

    python data_process/make_sample_data.py --out_dir examples/tiny/data --seed 0

Writes `sft_train.jsonl` and `sft_eval.jsonl` (OpenAI-style `{"messages": [...]}` rows), `corpus.txt`
(one document per line) for `tokenizer/train_tokenizer.py`, and `pref_train.jsonl` / `pref_eval.jsonl`
(`prompt`/`chosen`/`rejected`: the same question answered correctly and wrongly) for RM and DPO, and
`rl_prompts.jsonl` (`prompt`/`ground_truth`/`data_source` arithmetic prompts) for PPO/GRPO, `cls_train.jsonl` /
`cls_eval.jsonl` (`text`/`label`: a question and its topic) for sequence classification, and `emb_train.jsonl` /
`emb_eval.jsonl` (`query`/`positive`/`negative`: a question, its right answer, a wrong one) for embedding models.

`arithmetic/` holds the demo pipeline's checkable task (config/pipeline/tiny.yaml): one-digit additions and
subtractions, a table of 155 facts. The labelled data covers half of them, as when written demonstrations are
scarce and prompts with a checkable answer are not: `sft_train.jsonl` (chat rows) and `pref_train.jsonl` (right vs
wrong result) use the demonstrated half only, `prompts_train.jsonl` (GRPO, answers checked by the reward) has every
fact. `eval.jsonl` asks every fact once (prompt + ground truth, for exact-match accuracy), `eval_held_out.jsonl`
the facts with no demonstration, and `sft_eval.jsonl` answers every fact (for eval loss). The task measures how
much of the table a model has learnt, not generalisation to unseen numbers.
"""

import argparse
import json
import random
import re
from pathlib import Path

WORDS = [
    "apple", "banana", "cherry", "grape", "lemon", "mango", "melon", "peach", "plum", "pear",
    "river", "mountain", "forest", "ocean", "desert", "island", "valley", "cloud", "storm", "snow",
    "table", "chair", "window", "door", "garden", "kitchen", "bridge", "tower", "castle", "market",
    "tiger", "horse", "rabbit", "eagle", "dolphin", "turtle", "monkey", "zebra", "panda", "whale",
    "music", "paper", "pencil", "rocket", "planet", "silver", "golden", "purple", "orange", "yellow",
    "python", "model", "token", "matrix", "vector", "signal", "camera", "laptop", "phone", "robot",
]  # fmt: skip

# (English name, Chinese name, English capital, Chinese capital)
CAPITALS = [
    ("France", "法国", "Paris", "巴黎"),
    ("Germany", "德国", "Berlin", "柏林"),
    ("Italy", "意大利", "Rome", "罗马"),
    ("Spain", "西班牙", "Madrid", "马德里"),
    ("Japan", "日本", "Tokyo", "东京"),
    ("China", "中国", "Beijing", "北京"),
    ("Russia", "俄罗斯", "Moscow", "莫斯科"),
    ("Egypt", "埃及", "Cairo", "开罗"),
    ("Canada", "加拿大", "Ottawa", "渥太华"),
    ("Australia", "澳大利亚", "Canberra", "堪培拉"),
    ("Brazil", "巴西", "Brasilia", "巴西利亚"),
    ("India", "印度", "New Delhi", "新德里"),
    ("Thailand", "泰国", "Bangkok", "曼谷"),
    ("Greece", "希腊", "Athens", "雅典"),
    ("Kenya", "肯尼亚", "Nairobi", "内罗毕"),
    ("Peru", "秘鲁", "Lima", "利马"),
]

# (English unit, Chinese unit, English target, Chinese target, factor)
UNITS = [
    ("kilometers", "千米", "meters", "米", 1000),
    ("meters", "米", "centimeters", "厘米", 100),
    ("hours", "小时", "minutes", "分钟", 60),
    ("minutes", "分钟", "seconds", "秒", 60),
    ("kilograms", "千克", "grams", "克", 1000),
    ("days", "天", "hours", "小时", 24),
    ("weeks", "周", "days", "天", 7),
]

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a concise assistant. Answer in one short sentence.",
    "You are a careful math tutor.",
    "你是一个乐于助人的助手。",
    "你是一个简洁的助手，请用一句话回答。",
]

# kind -> ((English question, answer), (Chinese question, answer))
WORD_TASKS = {
    "reverse": (
        ('Reverse the word "{w}".', '"{w}" reversed is "{r}".'),
        ("把单词 {w} 倒过来写。", "{w} 倒过来是 {r}。"),
    ),
    "upper": (
        ('Write "{w}" in uppercase.', '"{w}" in uppercase is "{u}".'),
        ("把 {w} 转成大写。", "{w} 的大写是 {u}。"),
    ),
    "count": (
        ('How many letters are in "{w}"?', '"{w}" has {n} letters.'),
        ("单词 {w} 有几个字母？", "{w} 有 {n} 个字母。"),
    ),
}

OPS = {"+": ("加", lambda a, b: a + b), "-": ("减", lambda a, b: a - b), "*": ("乘", lambda a, b: a * b)}


def arithmetic(rng, wrong=False):
    """An English or Chinese addition, subtraction or multiplication question (`wrong`: the answer is off)."""
    op = rng.choice(list(OPS))
    a, b = (rng.randint(2, 12), rng.randint(2, 12)) if op == "*" else (rng.randint(0, 99), rng.randint(0, 99))
    if op == "-" and b > a:
        a, b = b, a
    zh_op, fn = OPS[op]
    english = rng.random() < 0.5
    result = fn(a, b) + (rng.choice([-10, -2, -1, 1, 2, 10]) if wrong else 0)
    if english:
        return ("arith", op, a, b), f"What is {a} {op} {b}?", f"{a} {op} {b} = {result}."
    return ("arith", op, a, b), f"计算 {a} {zh_op} {b}。", f"{a} {zh_op} {b} 等于 {result}。"


def word_task(rng, wrong=False):
    """Reverse, uppercase or count the letters of a short word, in English or Chinese (`wrong`: of another word)."""
    word, kind, zh = rng.choice(WORDS), rng.choice(list(WORD_TASKS)), rng.random() < 0.5
    question, answer = WORD_TASKS[kind][zh]
    other = rng.choice([w for w in WORDS if len(w) != len(word)]) if wrong else word
    fields = {"w": word, "r": other[::-1], "u": other.upper(), "n": len(other)}
    return (kind, word, zh), question.format(**fields), answer.format(**fields)


def capital(rng, wrong=False):
    """A capital-city question from the built-in table (`wrong`: another country's capital)."""
    country, zh_country, city, zh_city = rng.choice(CAPITALS)
    english = rng.random() < 0.5
    if wrong:
        _, _, city, zh_city = rng.choice([row for row in CAPITALS if row[0] != country])
    if english:  # key None: eval asks the same facts that train teaches
        return None, f"What is the capital of {country}?", f"The capital of {country} is {city}."
    return None, f"{zh_country}的首都是哪里？", f"{zh_country}的首都是{zh_city}。"


def convert(rng, wrong=False):
    """A unit conversion by a fixed factor (`wrong`: by a wrong factor)."""
    unit, zh_unit, target, zh_target, factor = rng.choice(UNITS)
    n = rng.randint(1, 20)
    english = rng.random() < 0.5
    result = n * factor * (rng.choice([2, 10]) if wrong else 1)
    if english:
        return ("convert", unit, n), f"Convert {n} {unit} to {target}.", f"{n} {unit} = {result} {target}."
    question, answer = f"{n} {zh_unit}等于多少{zh_target}？", f"{n} {zh_unit}等于 {result} {zh_target}。"
    return ("convert", zh_unit, n), question, answer


TASKS = [arithmetic, arithmetic, word_task, word_task, capital, convert]


def make_exchange(rng, avoid):
    """One (key, user, assistant) exchange whose operands key is not in `avoid`, if found in a few tries."""
    for _ in range(50):
        key, question, answer = rng.choice(TASKS)(rng)
        if key is None or key not in avoid:
            break
    return key, question, answer


def make_rows(rng, n, avoid):
    """`n` chat rows: some with a system message, some with two exchanges; returns rows and their keys."""
    rows, keys = [], set()
    for _ in range(n):
        messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < 0.3 else []
        for _ in range(2 if rng.random() < 0.2 else 1):
            key, question, answer = make_exchange(rng, avoid)
            keys.add(key)
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        rows.append({"messages": messages})
    return rows, keys


def preference_rows(rng, n, tasks=TASKS):
    """`n` preference pairs: the same question answered correctly (chosen) and wrongly (rejected)."""
    rows = []
    for _ in range(n):
        task = rng.choice(tasks)
        state = rng.getstate()
        _, question, chosen = task(rng)
        rng.setstate(state)  # the wrong answer is drawn for the very same question
        _, _, rejected = task(rng, wrong=True)
        rows.append({"prompt": question, "chosen": chosen, "rejected": rejected})
    return rows


def rl_prompt_rows(rng, n):
    """`n` arithmetic prompts with their numeric answer, in the RL prompt schema (prompt, ground_truth, data_source)."""
    rows = []
    for _ in range(n):
        _, question, answer = arithmetic(rng)
        rows.append({"prompt": question, "ground_truth": re.findall(r"-?\d+", answer)[-1], "data_source": "sample/arithmetic"})
    return rows


TOPICS = {arithmetic: "math", word_task: "words", capital: "geography", convert: "units"}


def classification_rows(rng, n):
    """`n` questions labelled with their topic (math, words, geography, units)."""
    rows = []
    for _ in range(n):
        task = rng.choice(list(TOPICS))
        rows.append({"text": task(rng)[1], "label": TOPICS[task]})
    return rows


def embedding_rows(rng, n):
    """`n` retrieval rows: a question (query), its right answer (positive) and a wrong answer (hard negative)."""
    return [{"query": row["prompt"], "positive": row["chosen"], "negative": [row["rejected"]]}
            for row in preference_rows(rng, n)]


def one_digit_facts():
    """Every one-digit addition and subtraction with a non-negative result: (question, answer, result)."""
    facts = []
    for a in range(10):
        for b in range(10):
            facts.append((f"What is {a} + {b}?", fact_answer(f"{a} + {b}", a + b), a + b))
            if a >= b:
                facts.append((f"What is {a} - {b}?", fact_answer(f"{a} - {b}", a - b), a - b))
    return facts


def fact_answer(expression, result):
    """The worked fact and its marked final answer (math_accuracy credits only a marked answer)."""
    return f"{expression} = {result}. Answer: {result}."


def write_arithmetic_task(out, rng, num_train, num_pairs):
    """The demo pipeline's task files (see the module docstring) under `out`."""
    facts = one_digit_facts()
    demonstrated = rng.sample(facts, len(facts) // 2)
    held_out = [fact for fact in facts if fact not in demonstrated]
    out.mkdir(parents=True, exist_ok=True)
    chat = lambda question, answer: {"messages": [{"role": "user", "content": question},
                                                  {"role": "assistant", "content": answer}]}
    prompt = lambda question, result: {"prompt": question, "ground_truth": str(result), "data_source": "sample/one_digit"}
    write_jsonl(out / "sft_train.jsonl", [chat(q, a) for q, a, _ in (rng.choice(demonstrated) for _ in range(num_train))])
    write_jsonl(out / "sft_eval.jsonl", [chat(q, a) for q, a, _ in facts])
    write_jsonl(out / "eval.jsonl", [prompt(q, r) for q, _, r in facts])
    write_jsonl(out / "eval_held_out.jsonl", [prompt(q, r) for q, _, r in held_out])
    write_jsonl(out / "prompts_train.jsonl", [prompt(q, r) for q, _, r in rng.sample(facts, len(facts))])
    pairs = []
    for question, answer, result in (rng.choice(demonstrated) for _ in range(num_pairs)):
        wrong = max(0, result + rng.choice([-2, -1, 1, 2]))
        wrong = wrong if wrong != result else result + 1
        pairs.append({"prompt": question, "chosen": answer, "rejected": fact_answer(answer.split(" =")[0], wrong)})
    write_jsonl(out / "pref_train.jsonl", pairs)


def corpus_sentences(rng, n):
    """`n` plain English/Chinese sentences from templates, for tokenizer training."""
    sentences = []
    for _ in range(n):
        word, other, num = rng.choice(WORDS), rng.choice(WORDS), rng.randint(2, 99)
        (c1, zc1, cap1, zcap1), (c2, zc2, cap2, zcap2) = rng.sample(CAPITALS, 2)
        unit, zh_unit, target, zh_target, factor = rng.choice(UNITS)
        sentences.append(
            rng.choice(
                [
                    f"The {word} is near the {other}.",
                    f"I saw {num} {word}s and {rng.randint(2, 99)} {other}s today.",
                    f"{cap1} is the capital of {c1}, and {cap2} is the capital of {c2}.",
                    f"If you add {num} and {rng.randint(0, 99)}, you get a bigger number.",
                    f"One {unit[:-1]} is {factor} {target}.",
                    f"我们在{zcap1}看到了 {num} 只{rng.choice(['熊猫', '老虎', '兔子', '海豚'])}。",
                    f"{zc1}的首都是{zcap1}，{zc2}的首都是{zcap2}。",
                    f"今天是星期{rng.choice('一二三四五六日')}，天气{rng.choice(['很好', '不错', '有点冷', '很热'])}。",
                    f"1 {zh_unit}等于 {factor} {zh_target}。",
                    f"他把 {word} 写成了大写 {word.upper()}。",
                ]
            )
        )
    return sentences


def write_jsonl(path, rows):
    """Write rows as UTF-8 JSON lines."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", default="examples/tiny/data", help="where to write the files")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files")
    parser.add_argument("--num_train", type=int, default=600, help="chat rows in sft_train.jsonl")
    parser.add_argument("--num_eval", type=int, default=60, help="chat rows in sft_eval.jsonl")
    parser.add_argument("--num_sentences", type=int, default=1500, help="template sentences in corpus.txt")
    parser.add_argument("--num_pairs", type=int, default=600, help="preference pairs in pref_train.jsonl")
    parser.add_argument("--num_eval_pairs", type=int, default=100, help="preference pairs in pref_eval.jsonl")
    parser.add_argument("--num_rl_prompts", type=int, default=200, help="arithmetic prompts in rl_prompts.jsonl")
    parser.add_argument("--num_cls", type=int, default=400, help="labelled questions in cls_train.jsonl (cls_eval: a quarter)")
    parser.add_argument("--num_emb", type=int, default=400, help="retrieval rows in emb_train.jsonl (emb_eval: a quarter)")
    parser.add_argument("--num_arithmetic", type=int, default=2000, help="chat rows in arithmetic/sft_train.jsonl")
    parser.add_argument("--num_arithmetic_pairs", type=int, default=600, help="pairs in arithmetic/pref_train.jsonl")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    eval_rows, eval_keys = make_rows(rng, args.num_eval, avoid=set())
    train_rows, _ = make_rows(rng, args.num_train, avoid=eval_keys)
    chat_text = [m["content"] for row in train_rows + eval_rows for m in row["messages"]]
    lines = corpus_sentences(rng, args.num_sentences) + chat_text

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "sft_train.jsonl", train_rows)
    write_jsonl(out / "sft_eval.jsonl", eval_rows)
    (out / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")
    pair_rng = random.Random(args.seed + 1)  # its own stream: the chat files stay as they were
    write_jsonl(out / "pref_train.jsonl", preference_rows(pair_rng, args.num_pairs))
    write_jsonl(out / "pref_eval.jsonl", preference_rows(pair_rng, args.num_eval_pairs))
    write_jsonl(out / "rl_prompts.jsonl", rl_prompt_rows(random.Random(args.seed + 2), args.num_rl_prompts))
    cls_rng, emb_rng = random.Random(args.seed + 3), random.Random(args.seed + 4)
    write_jsonl(out / "cls_train.jsonl", classification_rows(cls_rng, args.num_cls))
    write_jsonl(out / "cls_eval.jsonl", classification_rows(cls_rng, args.num_cls // 4))
    write_jsonl(out / "emb_train.jsonl", embedding_rows(emb_rng, args.num_emb))
    write_jsonl(out / "emb_eval.jsonl", embedding_rows(emb_rng, args.num_emb // 4))
    write_arithmetic_task(out / "arithmetic", random.Random(args.seed + 3), args.num_arithmetic, args.num_arithmetic_pairs)
    print(f"wrote {len(train_rows)} train rows, {len(eval_rows)} eval rows, {len(lines)} corpus lines, "
          f"{args.num_pairs} + {args.num_eval_pairs} preference pairs to {out}")


if __name__ == "__main__":
    main()
