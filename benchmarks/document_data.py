"""Write the document domain: typeset pages of public-domain texts, as a flatbed scanner at about 100 dpi sees
them, for fine-tuning (``data/documents/train``), 64×64 crops to choose fine-tuning settings on
(``data/documents/tune``) and held-out 64×64 evaluation crops (``data/documents/heldout``); and the demo's samples
(``data/demo``: the first held-out crop of each held-out passage).

    .venv/bin/python benchmarks/document_data.py      # needs matplotlib (its bundled DejaVu and STIX fonts)
    .venv/bin/python benchmarks/document_data.py --font-sizes 16 24 --out logs/documents16   # larger type

A page is one passage of ``TEXTS`` set in one of the fonts at a drawn size (``--font-sizes``, default 7 to 12
pixels: lowercase letters about 4 to 7 pixels tall, 1 to 2 in an SR×4 observation of a crop), dark ink on paper
of a drawn tone with a gentle shading, rendered at 4× and reduced with an antialiased (box) filter, then turned by
a small drawn angle, as a page lies on a scanner. The training, tuning and held-out pages are set from different
passages (``TRAIN_TEXTS``, ``TUNE_TEXTS``, ``HELDOUT_TEXTS``): no line of text, and so no crop, is in two of them
(``tests/test_finetune.py`` checks the split). Settings of a fine-tuning recipe are compared on the tuning crops
(``benchmarks/finetune_sweep.py``), and only the chosen recipe is scored on the held-out ones. Each tuning or
held-out page gives 4 crops at drawn positions; a crop that is almost blank (standard deviation below 0.08) is
drawn again. Everything is seeded: a rerun writes the same files. ``--out`` writes the three sets elsewhere (and
no demo samples), e.g. a variant of the domain at other ``--font-sizes``.
"""

from __future__ import annotations

import argparse
import random
import textwrap
from pathlib import Path
from typing import List

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "data" / "documents"
DEMO = ROOT / "data" / "demo"
PAGE, ZOOM, CROP, CROPS_PER_PAGE = 256, 4, 64, 4
FONT_SIZES = (7.0, 12.0)  # the font size in final pixels (x-height about half of it)
FONTS = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "STIXGeneral.ttf", "DejaVuSans-Bold.ttf",
         "STIXGeneralItalic.ttf")

# Public-domain texts (United States federal documents and speeches, and works published before 1900).
TEXTS = {
    "preamble": "We the People of the United States, in Order to form a more perfect Union, establish Justice, "
                "insure domestic Tranquility, provide for the common defence, promote the general Welfare, and "
                "secure the Blessings of Liberty to ourselves and our Posterity, do ordain and establish this "
                "Constitution for the United States of America.",
    "article1": "All legislative Powers herein granted shall be vested in a Congress of the United States, which "
                "shall consist of a Senate and House of Representatives. The House of Representatives shall be "
                "composed of Members chosen every second Year by the People of the several States, and the "
                "Electors in each State shall have the Qualifications requisite for Electors of the most "
                "numerous Branch of the State Legislature.",
    "declaration": "When in the Course of human events, it becomes necessary for one people to dissolve the "
                   "political bands which have connected them with another, and to assume among the powers of the "
                   "earth, the separate and equal station to which the Laws of Nature and of Nature's God entitle "
                   "them, a decent respect to the opinions of mankind requires that they should declare the causes "
                   "which impel them to the separation.",
    "gettysburg": "Four score and seven years ago our fathers brought forth on this continent, a new nation, "
                  "conceived in Liberty, and dedicated to the proposition that all men are created equal. Now we "
                  "are engaged in a great civil war, testing whether that nation, or any nation so conceived and "
                  "so dedicated, can long endure. We are met on a great battle-field of that war.",
    "first_amendment": "Congress shall make no law respecting an establishment of religion, or prohibiting the "
                       "free exercise thereof; or abridging the freedom of speech, or of the press; or the right "
                       "of the people peaceably to assemble, and to petition the Government for a redress of "
                       "grievances. A well regulated Militia, being necessary to the security of a free State.",
    "pride": "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be "
             "in want of a wife. However little known the feelings or views of such a man may be on his first "
             "entering a neighbourhood, this truth is so well fixed in the minds of the surrounding families, "
             "that he is considered the rightful property of some one or other of their daughters.",
    "moby": "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, "
            "and nothing particular to interest me on shore, I thought I would sail about a little and see the "
            "watery part of the world. It is a way I have of driving off the spleen, and regulating the "
            "circulation. Whenever I find myself growing grim about the mouth.",
    "tale": "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
            "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of "
            "Light, it was the season of Darkness, it was the spring of hope, it was the winter of despair, we "
            "had everything before us, we had nothing before us.",
    "second_inaugural": "With malice toward none, with charity for all, with firmness in the right as God gives "
                        "us to see the right, let us strive on to finish the work we are in, to bind up the "
                        "nation's wounds, to care for him who shall have borne the battle and for his widow and "
                        "his orphan, to do all which may achieve and cherish a just and lasting peace.",
    "walden": "I went to the woods because I wished to live deliberately, to front only the essential facts of "
              "life, and see if I could not learn what it had to teach, and not, when I came to die, discover "
              "that I had not lived. I did not wish to live what was not life, living is so dear; nor did I wish "
              "to practise resignation, unless it was quite necessary.",
    "alice": "Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing "
             "to do: once or twice she had peeped into the book her sister was reading, but it had no pictures "
             "or conversations in it, and what is the use of a book, thought Alice, without pictures or "
             "conversations? So she was considering in her own mind.",
    "origin": "When on board H.M.S. Beagle, as naturalist, I was much struck with certain facts in the "
              "distribution of the organic beings inhabiting South America, and in the geological relations of "
              "the present to the past inhabitants of that continent. These facts seemed to throw some light on "
              "the origin of species, that mystery of mysteries.",
    # the tuning passages
    "frankenstein": "You will rejoice to hear that no disaster has accompanied the commencement of an enterprise "
                    "which you have regarded with such evil forebodings. I arrived here yesterday, and my first "
                    "task is to assure my dear sister of my welfare and increasing confidence in the success of "
                    "my undertaking. I am already far north of London.",
    "jane_eyre": "There was no possibility of taking a walk that day. We had been wandering, indeed, in the "
                 "leafless shrubbery an hour in the morning; but since dinner the cold winter wind had brought "
                 "with it clouds so sombre, and a rain so penetrating, that further out-door exercise was now "
                 "out of the question. I was glad of it.",
    "great_expectations": "My father's family name being Pirrip, and my Christian name Philip, my infant tongue "
                          "could make of both names nothing longer or more explicit than Pip. So, I called "
                          "myself Pip, and came to be called Pip. I give Pirrip as my father's family name, on "
                          "the authority of his tombstone and my sister.",
    "emancipation": "That on the first day of January, in the year of our Lord one thousand eight hundred and "
                    "sixty-three, all persons held as slaves within any State or designated part of a State, "
                    "the people whereof shall then be in rebellion against the United States, shall be then, "
                    "thenceforward, and forever free.",
}
HELDOUT_TEXTS = ("second_inaugural", "walden", "alice", "origin")
TUNE_TEXTS = ("frankenstein", "jane_eyre", "great_expectations", "emancipation")
TRAIN_TEXTS = tuple(name for name in TEXTS if name not in HELDOUT_TEXTS + TUNE_TEXTS)
TRAIN_PAGES_PER_TEXT, HELDOUT_PAGES_PER_TEXT = 4, 2


def font_path(name: str) -> Path:
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise SystemExit("benchmarks/document_data.py: the pages are set in matplotlib's bundled DejaVu fonts; "
                         "install it: pip install 'matplotlib>=3.5'") from None
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name


def render_page(text: str, rng: random.Random, sizes=FONT_SIZES) -> Image.Image:
    """One page (RGB, ``PAGE``² pixels) of ``text`` in a drawn font, size (from ``sizes``), ink, paper and angle."""
    big = PAGE * ZOOM
    size = rng.uniform(*sizes) * ZOOM
    font = ImageFont.truetype(str(font_path(rng.choice(FONTS))), round(size))
    paper = np.array([rng.uniform(225, 250)] * 3) + np.array([rng.uniform(0, 8), rng.uniform(0, 5), 0])
    ink = rng.uniform(10, 70)
    canvas = Image.new("L", (big, big), 0)  # ink coverage, white = ink
    draw = ImageDraw.Draw(canvas)
    margin = rng.uniform(0.0, 0.08) * big
    width_chars = max(8, int((big - 2 * margin) / (font.getlength("n") or size * 0.5)))
    lines: List[str] = []
    while len(lines) * size * 1.3 < big:  # the passage again until the page is full
        lines += textwrap.wrap(text, width_chars)
    top = margin - rng.uniform(0, size)
    spacing = size * rng.uniform(1.15, 1.6)
    for k, line in enumerate(lines):
        draw.text((margin, top + k * spacing), line, fill=255, font=font)
    angle = rng.uniform(-2.0, 2.0)
    canvas = canvas.rotate(angle, resample=Image.BICUBIC, fillcolor=0)
    coverage = np.asarray(canvas.resize((PAGE, PAGE), Image.BOX), dtype=np.float64) / 255
    yy, xx = np.mgrid[0:PAGE, 0:PAGE] / PAGE
    shading = 1 - rng.uniform(0.0, 0.06) * ((xx - rng.random()) ** 2 + (yy - rng.random()) ** 2)
    pixels = (paper[None, None, :] * shading[..., None]) * (1 - coverage[..., None]) + ink * coverage[..., None]
    return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), "RGB")


def pages(names, per_text: int, seed: int, sizes=FONT_SIZES):
    rng = random.Random(seed)
    for name in names:
        for k in range(per_text):
            yield f"{name}_{k}", render_page(TEXTS[name], rng, sizes)


def write_crops(folder: Path, names, seed: int, sizes=FONT_SIZES) -> int:
    """``CROPS_PER_PAGE`` crops of each of ``HELDOUT_PAGES_PER_TEXT`` pages per passage; returns their count."""
    rng = np.random.default_rng(seed)
    count = 0
    for name, page in pages(names, HELDOUT_PAGES_PER_TEXT, seed=seed, sizes=sizes):
        array = np.asarray(page)
        for k in range(CROPS_PER_PAGE):
            while True:
                top, left = (int(v) for v in rng.integers(0, PAGE - CROP + 1, size=2))
                crop = array[top:top + CROP, left:left + CROP]
                if (crop / 255).std() >= 0.08:
                    break
            Image.fromarray(crop, "RGB").save(folder / f"{name}_{k}.png", optimize=True)
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--font-sizes", type=float, nargs=2, default=list(FONT_SIZES), metavar=("LOW", "HIGH"),
                        help="the range the pages' font sizes are drawn from, in pixels (default %(default)s)")
    parser.add_argument("--out", type=Path, default=OUT, help="the folder of the three sets (default %(default)s; "
                        "the demo samples are written only with it)")
    args = parser.parse_args()
    sizes, out = tuple(args.font_sizes), args.out
    train, tune, heldout = out / "train", out / "tune", out / "heldout"
    for folder in (train, tune, heldout):
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()
    for name, page in pages(TRAIN_TEXTS, TRAIN_PAGES_PER_TEXT, seed=1, sizes=sizes):
        page.save(train / f"{name}.png", optimize=True)
    count = write_crops(heldout, HELDOUT_TEXTS, seed=2, sizes=sizes)
    tuning = write_crops(tune, TUNE_TEXTS, seed=3, sizes=sizes)
    print(f"{len(list(train.glob('*.png')))} training pages in {train}, {tuning} tuning crops in {tune}, "
          f"{count} held-out crops in {heldout}")
    if out.resolve() != OUT.resolve():
        return
    DEMO.mkdir(parents=True, exist_ok=True)
    for old in DEMO.glob("*.png"):
        old.unlink()
    for name in HELDOUT_TEXTS:
        (DEMO / f"{name}.png").write_bytes((heldout / f"{name}_0_0.png").read_bytes())
    print(f"{len(HELDOUT_TEXTS)} demo samples in {DEMO}")


if __name__ == "__main__":
    main()
