"""The demo's built-in data, made on the fly: drawn images with template captions, a templated
instruction set, and prompts for batch inference. Deterministic (seeded)."""

import json
import os
import random

from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30),
          "purple": (140, 60, 180), "orange": (240, 130, 30)}
SHAPES = ("circle", "square", "triangle")
CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Kenya": "Nairobi", "Peru": "Lima", "Canada": "Ottawa",
            "Egypt": "Cairo", "Norway": "Oslo", "India": "New Delhi", "Chile": "Santiago", "Spain": "Madrid",
            "Italy": "Rome", "Ghana": "Accra"}


def draw(shape, color, background, size=96):
    image = Image.new("RGB", (size, size), COLORS[background])
    box = (size // 5, size // 5, size - size // 5, size - size // 5)
    painter = ImageDraw.Draw(image)
    if shape == "circle":
        painter.ellipse(box, fill=COLORS[color])
    elif shape == "square":
        painter.rectangle(box, fill=COLORS[color])
    else:
        painter.polygon([(size // 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=COLORS[color])
    return image


def image_text_rows(directory, count, rng):
    """Rows of {"id", "prompt", "response", "images"}, each with one PNG drawn into `directory/images`."""
    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    rows = []
    for index in range(count):
        shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
        background = rng.choice([c for c in COLORS if c != color])
        name = f"images/{index:03d}.png"
        draw(shape, color, background).save(os.path.join(directory, name))
        rows.append({"id": f"image-{index:03d}", "prompt": "<start_of_image>What does this picture show?",
                     "response": f"A {color} {shape} on a {background} background.", "images": [name]})
    return rows


def instruction_rows(count, rng):
    """Short question/answer pairs with one fixed answer style, so that a few LoRA steps show."""
    rows = []
    for index in range(count):
        if index % 2:
            country = rng.choice(list(CAPITALS))
            prompt, response = f"What is the capital of {country}?", f"Answer: {CAPITALS[country]}."
        else:
            a, b = rng.randint(2, 49), rng.randint(2, 49)
            prompt, response = f"What is {a} plus {b}?", f"Answer: {a + b}."
        rows.append({"id": f"instruction-{index:03d}", "prompt": prompt, "response": response})
    return rows


def write_jsonl(path, rows):
    with open(path, "w") as file:
        file.writelines(json.dumps(row) + "\n" for row in rows)
    return path


def write_datasets(directory, fast):
    """Writes captions.jsonl (+ images/), instructions.jsonl and prompts.jsonl; returns their paths and counts."""
    rng = random.Random(0)
    os.makedirs(directory, exist_ok=True)
    captions = image_text_rows(directory, 8 if fast else 24, rng)
    instructions = instruction_rows(16 if fast else 64, rng)
    prompts = [{"id": f"prompt-{index:03d}", "prompt": prompt} for index, prompt in enumerate(
        [f"What is the capital of {country}?" for country in list(CAPITALS)[: 3 if fast else 8]]
        + [f"What is {a} plus {b}?" for a, b in [(3, 4), (12, 30), (25, 25), (7, 41)][: 2 if fast else 4]])]
    prompts.append({"id": "prompt-empty", "prompt": ""})  # a bad row: it must come out in the errors
    return {"captions": write_jsonl(os.path.join(directory, "captions.jsonl"), captions),
            "instructions": write_jsonl(os.path.join(directory, "instructions.jsonl"), instructions),
            "prompts": write_jsonl(os.path.join(directory, "prompts.jsonl"), prompts),
            "counts": {"captions": len(captions), "instructions": len(instructions), "prompts": len(prompts)}}
