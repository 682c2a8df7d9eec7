r"""Contest-style expressions drawn in other ways than helper.py's generator, to measure how a model reads images it
was not trained on. A script, not a test. --style=strings (the default): whole strings by Pillow, no per-glyph
transforms, in TrueType fonts the generator never used; it wrote the held-out set
tests/data/other_renderers/ that tests/test_shipped_model.py reads, with the STIX and Computer Modern fonts that
matplotlib 3.11 bundles (helper.py drew the shipped model's training images with Hershey and DejaVu fonts):

    pip install pillow; pip download matplotlib==3.11.2 --no-deps -d /tmp/mpl && unzip -q -o /tmp/mpl/*.whl -d /tmp/mpl
    cd /tmp/mpl/matplotlib/mpl-data/fonts/ttf && python $OLDPWD/tests/other_renderers.py --seed=7 \
        --out_dir=$OLDPWD/tests/data/other_renderers --num_images=100 \
        --fonts {STIXGeneral,STIXGeneralBol,STIXGeneralItalic,cmr10,cmss10,cmtt10,cmb10}.ttf

Per image: a font file, size and colour, a plain or tinted background, sometimes noise dots, a line, a small
rotation or blur, and an image size around the contest's 180x60 (the model resizes whatever it reads).

--style=rotated: the same, but each character drawn on its own and turned up to 20 degrees either way, with noise
dots and lines. --style=captcha: the `captcha` package's ImageCaptcha at 180x60 with its own font (--fonts is not
used), its randomness drawn from --seed. --style=plates: number plates instead of expressions (PLATE_FORMATS, in
PLATE_CHARSET): dark letters and digits on a white or yellow plate with a border, photographed at a slant (a
perspective warp), with uneven light, blur, noise and JPEG artefacts, at about 200x55. --style=meter: meter
readings (digits and a decimal point, METER_CHARSET) on a seven-segment display, LCD or LED, drawn without fonts,
photographed at a slant like the plates, sometimes with a glare. --style=blank: images without
text (plain white, black, grey or paper-coloured, or with noise dots and lines only), named `<id>_.png`: the reading
should be empty.
"""
import random
import argparse
import os
import sys

import cv2
import numpy as np
from captcha.image import ImageCaptcha
from PIL import Image, ImageDraw, ImageFilter, ImageFont

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from helper import contest_expression  # noqa: E402  (the repository is not a package)

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out_dir', required=True, help='folder to write <id>_<label>.png images into')
    parser.add_argument('--num_images', type=int, default=100)
    parser.add_argument('--seed', type=int, default=7)
    parser.add_argument('--fonts', nargs='+', default=[], help='TrueType files to draw with')
    parser.add_argument('--style', default='strings',
                        choices=['strings', 'rotated', 'captcha', 'plates', 'meter', 'blank'])
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
    noise(image, rng)
    if rng.random() < 0.3:
        image = image.rotate(rng.uniform(-6, 6), resample=Image.BILINEAR, fillcolor=background)
    if rng.random() < 0.25:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.0)))
    return image


def noise(image, rng):
    """Sometimes up to 60 dots and a line, in random colours."""
    canvas = ImageDraw.Draw(image)
    width, height = image.size
    for _ in range(rng.integers(0, 60) if rng.random() < 0.4 else 0):
        canvas.point((int(rng.integers(0, width)), int(rng.integers(0, height))),
                     fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    if rng.random() < 0.3:
        canvas.line([(int(rng.integers(0, width // 3)), int(rng.integers(0, height))),
                     (int(rng.integers(2 * width // 3, width)), int(rng.integers(0, height)))],
                    fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=1)


def turned_glyphs(label, font, angles):
    """A coverage image per character, cropped to its ink and turned by its angle."""
    glyphs = []
    for char, angle in zip(label, angles):
        glyph = Image.new('L', (2 * font.size, 2 * font.size))
        ImageDraw.Draw(glyph).text((font.size // 2, font.size // 2), char, font=font, fill=255)
        glyph = glyph.crop(glyph.getbbox())
        glyphs.append(glyph.rotate(angle, resample=Image.BILINEAR, expand=True))
    return glyphs


def draw_rotated(label, fonts, rng):
    """Each character drawn on its own in one font, turned up to 20 degrees, then noise: about 180x60."""
    width, height = int(rng.integers(160, 221)), int(rng.integers(50, 71))
    background = tuple(int(v) for v in rng.integers(215, 256, 3))
    ink = tuple(int(v) for v in rng.integers(0, 120, 3))
    image = Image.new('RGB', (width, height), background)
    font = ImageFont.truetype(fonts[rng.integers(0, len(fonts))], int(height * rng.uniform(0.45, 0.7)))
    angles = rng.uniform(-20, 20, len(label))
    glyphs = turned_glyphs(label, font, angles)
    while sum(g.size[0] for g in glyphs) > width - 4:
        font = ImageFont.truetype(font.path, font.size - 2)
        glyphs = turned_glyphs(label, font, angles)
    total = sum(g.size[0] for g in glyphs)
    gap = max(1, (width - 4 - total) // (2 * len(glyphs)))
    x = int(rng.integers(2, max(3, width - total - gap * (len(glyphs) - 1))))
    for glyph in glyphs:
        y = (height - glyph.size[1]) // 2 + int(rng.integers(-3, 4))
        image.paste(ink, (x, y), glyph)
        x += glyph.size[0] + gap
    noise(image, rng)
    return image


PLATE_LETTERS = 'ABCDEFGHJKLMNPRSTUVWXYZ'  # no I, O or Q, as on many countries' plates
PLATE_FORMATS = ('LL-NNN-LL', 'LLNNLLL', 'NNN-LLL', 'LLL-NNNN', 'NN-LL-NN', 'LNNNLL')  # L a letter, N a digit
PLATE_CHARSET = '0123456789-' + PLATE_LETTERS


def plate_label(rng):
    """A number plate in one of PLATE_FORMATS."""
    pattern = PLATE_FORMATS[rng.integers(0, len(PLATE_FORMATS))]
    return ''.join({'L': PLATE_LETTERS[rng.integers(0, len(PLATE_LETTERS))], 'N': str(rng.integers(0, 10))}.get(
        part, part) for part in pattern)


def draw_plate(label, fonts, rng):
    """A number plate seen at a slant: the plate drawn flat (border, text), its corners moved inwards by up to 10%
    of a photo of about 200x55 (a perspective warp that keeps all of it in view), then lit unevenly, sometimes
    blurred or shrunk and enlarged again, noised and JPEG-compressed."""
    colour = np.array((255, 255, 255) if rng.random() < 0.6 else (250, 205, 40)) * rng.uniform(0.75, 1.0)
    ink = tuple(int(v) for v in rng.integers(0, 60, 3))
    plate = Image.new('RGB', (520, 110), tuple(int(v) for v in colour))
    canvas = ImageDraw.Draw(plate)
    canvas.rectangle((3, 3, 516, 106), outline=ink, width=int(rng.integers(2, 7)))
    font = ImageFont.truetype(fonts[rng.integers(0, len(fonts))], int(rng.uniform(62, 84)))
    left, top, right, bottom = canvas.textbbox((0, 0), label, font=font)
    while right - left > 480:
        font = ImageFont.truetype(font.path, font.size - 2)
        left, top, right, bottom = canvas.textbbox((0, 0), label, font=font)
    canvas.text(((520 - right - left) // 2, (110 - bottom - top) // 2), label, font=font, fill=ink)
    width, height = int(rng.integers(180, 231)), int(rng.integers(48, 64))
    photo = at_a_slant(np.asarray(plate), width, height, 0.1, 256, rng)
    return camera(photo, rng, further=True)


def at_a_slant(flat, width, height, most, surround, rng, interpolation=cv2.INTER_LINEAR):
    """A flat RGB picture photographed at a slant: its corners moved inwards by up to `most` of a float32 photo
    width x height (a perspective warp that keeps all of it in view), a random colour below `surround` around it,
    lit unevenly from left to right."""
    corners = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    inwards = np.float32([[1, 1], [-1, 1], [-1, -1], [1, -1]]) * rng.uniform(0, most, (4, 2)) * [width, height]
    high, wide = flat.shape[:2]
    matrix = cv2.getPerspectiveTransform(np.float32([[0, 0], [wide, 0], [wide, high], [0, high]]),
                                         (corners + inwards).astype(np.float32))
    border = tuple(int(v) for v in rng.integers(0, surround, 3))
    photo = cv2.warpPerspective(flat, matrix, (width, height), flags=interpolation, borderValue=border)
    photo = photo.astype(np.float32)
    photo *= np.linspace(rng.uniform(0.6, 1.1), rng.uniform(0.6, 1.1), width)[None, :, None]
    return photo


def camera(photo, rng, further=False):
    """A float32 photo as a camera gives it: sometimes blurred (further: or shrunk and enlarged again, as from
    further away), noised and JPEG-compressed; a PIL image."""
    if rng.random() < 0.5:
        photo = cv2.GaussianBlur(photo, (0, 0), rng.uniform(0.3, 1.2))
    if further and rng.random() < 0.3:
        height, width = photo.shape[:2]
        small = cv2.resize(photo, None, fx=rng.uniform(0.5, 0.9), fy=rng.uniform(0.5, 0.9),
                           interpolation=cv2.INTER_AREA)
        photo = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    photo = np.clip(photo + rng.normal(0, rng.uniform(0, 8), photo.shape), 0, 255).astype(np.uint8)
    jpeg = cv2.imencode('.jpg', photo, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 95))])[1]
    return Image.fromarray(cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED))


METER_CHARSET = '0123456789.'
SEGMENTS = {'0': 'abcdef', '1': 'bc', '2': 'abged', '3': 'abgcd', '4': 'fgbc', '5': 'afgcd', '6': 'afgedc',
            '7': 'abc', '8': 'abcdefg', '9': 'abcdfg'}  # a top, b c right, d bottom, e f left, g middle


def meter_label(rng):
    """A meter reading: 4 to 7 digits, half of them with a decimal point between two of them."""
    digits = ''.join(str(d) for d in rng.integers(0, 10, int(rng.integers(4, 8))))
    point = int(rng.integers(1, len(digits)))
    return digits[:point] + '.' + digits[point:] if rng.random() < 0.5 else digits


def segment(name, width, height, thick):
    """The hexagon of one segment of a digit cell width x height, in the cell's coordinates."""
    half, gap = thick / 2, 1.5
    ends = {'a': ((0, 0), (width, 0)), 'g': ((0, height / 2), (width, height / 2)), 'd': ((0, height), (width, height)),
            'f': ((0, 0), (0, height / 2)), 'b': ((width, 0), (width, height / 2)),
            'e': ((0, height / 2), (0, height)), 'c': ((width, height / 2), (width, height))}[name]
    (x0, y0), (x1, y1) = ends
    if y0 == y1:
        return [(x0 + gap, y0), (x0 + gap + half, y0 - half), (x1 - gap - half, y0 - half), (x1 - gap, y0),
                (x1 - gap - half, y0 + half), (x0 + gap + half, y0 + half)]
    return [(x0, y0 + gap), (x0 + half, y0 + gap + half), (x0 + half, y1 - gap - half), (x0, y1 - gap),
            (x0 - half, y1 - gap - half), (x0 - half, y0 + gap + half)]


def seven_segments(label, rng):
    """A float32 RGB picture of the reading on a seven-segment display, its digits at a slant: an LCD (dark on
    grey-green) or an LED display (bright, glowing, on dark); half the displays show their unlit segments faintly."""
    height, thick = 80, rng.uniform(8, 14)
    width, space, slant = height * rng.uniform(0.45, 0.6), rng.uniform(10, 22), rng.uniform(0, 0.2)
    digits = label.replace('.', '')
    lit, ghost = Image.new('L', (int(len(digits) * (width + space) + 60), 120)), rng.uniform(0.05, 0.2)
    unlit = Image.new('L', lit.size)
    points = [i - 1 for i, char in enumerate(label) if char == '.']  # the digit each point follows
    for index, digit in enumerate(digits):
        left = 30 + index * (width + space)
        for name in 'abcdefg':
            ImageDraw.Draw(lit if name in SEGMENTS[digit] else unlit).polygon(
                [(left + x + slant * (height - y), 20 + y) for x, y in segment(name, width, height, thick)], fill=255)
        if index in points:
            ImageDraw.Draw(lit).ellipse((left + width + space / 2 - thick / 2, 20 + height - thick / 2,
                                         left + width + space / 2 + thick / 2, 20 + height + thick / 2), fill=255)
    shape = np.asarray(lit, np.float32) / 255 + ghost * (rng.random() < 0.5) * np.asarray(unlit, np.float32) / 255
    lcd = rng.random() < 0.7
    back = np.array([170, 190, 160] if lcd else [20, 20, 25]) * rng.uniform(0.7, 1.1, 3)
    ink = np.array([30, 35, 30] if lcd else [(255, 40, 30), (60, 255, 80), (80, 200, 255)][rng.integers(0, 3)])
    if not lcd:  # an LED's glow
        shape = np.maximum(shape, 0.5 * cv2.GaussianBlur(shape, (0, 0), 4))
    return (back + shape[..., None] * (ink - back)).astype(np.float32)


def draw_meter(label, rng):
    """A meter's display photographed like a plate (a perspective warp of up to 8% in a dark bezel, uneven light),
    sometimes with a glare across the glass, then as a camera gives it: about 200x60."""
    display = seven_segments(label, rng)
    width, height = int(rng.integers(170, 241)), int(rng.integers(50, 71))
    photo = at_a_slant(display, width, height, 0.08, 90, rng, cv2.INTER_AREA)
    if rng.random() < 0.3:
        x, y = np.meshgrid(np.arange(width), np.arange(height))
        centre, size = rng.uniform(0, width), rng.uniform(0.1, 0.3) * width
        glare = np.exp(-((x - centre) / size) ** 2 - ((y - height / 2) / height) ** 2)
        photo += rng.uniform(40, 110) * glare[..., None]
    return camera(photo, rng)


class SeededSecrets:
    """The part of the `secrets` module that ImageCaptcha uses, drawn from a seeded generator."""

    def __init__(self, seed):
        self.random = random.Random(seed)

    def randbelow(self, n):
        return self.random.randrange(n)

    def randbits(self, k):
        return self.random.getrandbits(k)

    def choice(self, items):
        return self.random.choice(items)


def draw_captcha(label, seed):
    """The captcha package's default ImageCaptcha at 180x60, its randomness from the seed."""
    import captcha.image
    captcha.image.secrets = SeededSecrets(seed)
    return ImageCaptcha(width=180, height=60).generate_image(label)


def draw_blank(rng):
    """An image without text: plain white, black, grey or paper-coloured, half of them with noise."""
    colour = [(255, 255, 255), (0, 0, 0), (128, 128, 128), (236, 226, 198)][rng.integers(0, 4)]
    image = Image.new('RGB', (180, 60), colour)
    if rng.random() < 0.5:
        noise(image, rng)
    return image


def main(argv):
    args = parse_args(argv)
    fonts = sorted(args.fonts)
    if args.style in ('strings', 'rotated', 'plates') and not fonts:
        raise SystemExit('--style=%s needs --fonts' % args.style)
    os.makedirs(args.out_dir, exist_ok=True)
    for image_id in range(args.num_images):
        rng = np.random.default_rng([args.seed, image_id])
        label = {'blank': lambda rng: '', 'plates': plate_label, 'meter': meter_label}.get(
            args.style, contest_expression)(rng)
        image = {'strings': lambda: draw(label, fonts, rng), 'rotated': lambda: draw_rotated(label, fonts, rng),
                 'captcha': lambda: draw_captcha(label, args.seed * 1000003 + image_id),
                 'plates': lambda: draw_plate(label, fonts, rng), 'meter': lambda: draw_meter(label, rng),
                 'blank': lambda: draw_blank(rng)}[args.style]()
        image.save(os.path.join(args.out_dir, '%d_%s.png' % (image_id, label)), optimize=True)
    print('wrote %d images (%s) to %s' % (args.num_images, args.style, args.out_dir))


if __name__ == '__main__':
    main(sys.argv[1:])
