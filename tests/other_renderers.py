r"""Contest-style expressions drawn in another way than helper.py's generator: whole strings by Pillow, no per-glyph
transforms, in TrueType fonts the generator never used. A script, not a test: it wrote the held-out set
tests/data/other_renderers/ that tests/test_shipped_model.py reads, with the STIX and Computer Modern fonts that
matplotlib 3.11 bundles (helper.py drew the shipped model's training images with Hershey and DejaVu fonts):

    pip install pillow; pip download matplotlib==3.11.2 --no-deps -d /tmp/mpl && unzip -q -o /tmp/mpl/*.whl -d /tmp/mpl
    cd /tmp/mpl/matplotlib/mpl-data/fonts/ttf && python $OLDPWD/tests/other_renderers.py --seed=7 \
        --out_dir=$OLDPWD/tests/data/other_renderers --num_images=100 \
        --fonts {STIXGeneral,STIXGeneralBol,STIXGeneralItalic,cmr10,cmss10,cmtt10,cmb10}.ttf

Per image: a font file, size and colour, a plain or tinted background, sometimes noise dots, a line, a small
rotation or blur, and an image size around the contest's 180x60 (the model resizes whatever it reads).
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from helper import contest_expression  # noqa: E402  (the repository is not a package)

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out_dir', required=True, help='folder to write <id>_<label>.png images into')
    parser.add_argument('--num_images', type=int, default=100)
    parser.add_argument('--seed', type=int, default=7)
    parser.add_argument('--fonts', nargs='+', required=True, help='TrueType files to draw with')
    return parser.parse_args(argv)


def draw(label, fonts, rng):
    """One contest-style image of the label: a PIL RGB image of about 180x60."""
    width, height = int(rng.integers(150, 241)), int(rng.integers(48, 81))
    light = rng.random() < 0.85
    background = tuple(int(v) for v in (rng.integers(200, 256, 3) if light else rng.integers(0, 70, 3)))
    ink = tuple(int(v) for v in (rng.integers(0, 110, 3) if light else rng.integers(180, 256, 3)))
    image = Image.new('RGB', (width, height), background)
    canvas = ImageDraw.Draw(image)
    font = ImageFont.truetype(fonts[rng.integers(0, len(fonts))], int(height * rng.uniform(0.4, 0.75)))
    left, top, right, bottom = canvas.textbbox((0, 0), label, font=font)
    while right - left > width - 8:
        font = ImageFont.truetype(font.path, font.size - 2)
        left, top, right, bottom = canvas.textbbox((0, 0), label, font=font)
    x = rng.integers(2, width - (right - left) - 2) - left
    y = rng.integers(2, max(3, height - (bottom - top) - 2)) - top
    canvas.text((int(x), int(y)), label, font=font, fill=ink)
    for _ in range(rng.integers(0, 60) if rng.random() < 0.4 else 0):
        canvas.point((int(rng.integers(0, width)), int(rng.integers(0, height))),
                     fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    if rng.random() < 0.3:
        canvas.line([(int(rng.integers(0, width // 3)), int(rng.integers(0, height))),
                     (int(rng.integers(2 * width // 3, width)), int(rng.integers(0, height)))],
                    fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=1)
    if rng.random() < 0.3:
        image = image.rotate(rng.uniform(-6, 6), resample=Image.BILINEAR, fillcolor=background)
    if rng.random() < 0.25:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.0)))
    return image


def main(argv):
    args = parse_args(argv)
    fonts = sorted(args.fonts)
    os.makedirs(args.out_dir, exist_ok=True)
    for image_id in range(args.num_images):
        rng = np.random.default_rng([args.seed, image_id])
        label = contest_expression(rng)
        draw(label, fonts, rng).save(os.path.join(args.out_dir, '%d_%s.png' % (image_id, label)), optimize=True)
    print('wrote %d images with %d fonts to %s' % (args.num_images, len(fonts), args.out_dir))


if __name__ == '__main__':
    main(sys.argv[1:])
