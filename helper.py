"""Dataset tools: split a labelled image set into `<id>_<label>` train and val folders, and synthesise images.

rename: labels file + images_dir -> pairs (id, image, label) -> shuffled with --seed -> copies named
`<id>_<label>.<ext>` in train_dir and val_dir. synth: per image, numpy generators seeded by (--seed, id) ->
label (contest expression, random string, or none) -> the classic renderer (OpenCV and Pillow) or the contest's
(modelled on the captcha package) -> `<id>_<label>.png`, plus a labels file.
"""
import collections
import functools
import glob
import multiprocessing
import os
import random
import shutil

import captcha
import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

import utils
from utils import (CONTEST_CHARSET, FLAGS, IMAGE_EXTENSIONS, MAX_NAME_BYTES, Charset, Progress, UserError,
                   check_writable, expression_value, id_label_name, image_id, log, natural_key, shorten)



# --- file names --------------------------------------------------------------

def check_label(label, where):
    """Refuses a label that cannot be part of a file name: / \\, whitespace, NUL and other control characters."""
    bad = sorted({c for c in label if c in '/\\' or c.isspace() or not c.isprintable()})
    if bad:
        raise UserError('%s: label %r has %s, which cannot be in a file name' % (
            where, label, ' '.join(repr(c) for c in bad)))


def make_room(count, directories, overwrite, replaced=frozenset()):
    """Refuses to touch images of ids 0..count-1 (`7_...`, not `007_...`) already in the folders; with overwrite,
    deletes them, except the `replaced` paths that the caller writes over, so that no id is kept twice (under an
    old label, or in the other folder). Returns the number of other images the folders hold.
    """
    clashes, others = [], 0
    for directory in dict.fromkeys(directories):
        names = os.listdir(directory) if os.path.isdir(directory) else []
        for name in names:
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            number = image_id(name)
            if number.isdecimal() and number == str(int(number)) and int(number) < count:
                clashes.append(os.path.join(directory, name))
            else:
                others += 1
    if clashes and not overwrite:
        raise UserError('%d images with the ids to write already exist: %s (--overwrite replaces them)' % (
            len(clashes), ', '.join(shorten(clashes, 5))))
    stale = [path for path in clashes if path not in replaced]
    for path in stale:
        os.remove(path)
    if clashes:
        log.info('replacing %d earlier images of the same ids, %d of them elsewhere or under another label '
                 '(--overwrite)', len(clashes), len(stale))
    return others


# --- rename: labels file + images -> train / val -----------------------------

def is_file_name(field):
    """Whether a labels file field names an image: it ends in one of utils.IMAGE_EXTENSIONS, any case."""
    return field.lower().endswith(IMAGE_EXTENSIONS)


def read_labels_file(path):
    """A labels file -> [(image file name or None, label)], one per line.

    If the first field of line 1 ends in an image extension, every line is `<file name> <label> [...]`;
    otherwise the file is in the contest format `<expression> <value>`, where line k (from 0) labels image k
    and the file name is None.
    """
    if not os.path.isfile(path):
        raise UserError('--labels_file=%s: no such file' % path)
    try:
        with open(path, encoding='utf-8-sig') as labels_file:
            lines = labels_file.read().rstrip().splitlines()
    except UnicodeDecodeError as error:
        raise UserError('--labels_file=%s is not UTF-8 text (%s)' % (path, error))
    if not lines:
        raise UserError('--labels_file=%s is empty' % path)
    first_fields = lines[0].split()
    named = bool(first_fields) and is_file_name(first_fields[0])
    return [parse_label_line(line, named, '--labels_file=%s line %d' % (path, number))
            for number, line in enumerate(lines, 1)]


def parse_label_line(line, named, where):
    """One line of a labels file -> (file name or None, label); see read_labels_file."""
    fields = line.split()
    if not fields:
        raise UserError('%s is blank: every line must label one image' % where)
    if named and not is_file_name(fields[0]):
        raise UserError('%s: %r is not `<file name> <label>` like line 1 (file names end in %s)' % (
            where, line, '/'.join(IMAGE_EXTENSIONS)))
    label = (fields[1] if len(fields) > 1 else '') if named else fields[0]  # a file name alone: no text
    check_label(label, where)
    return (fields[0] if named else None), label


def find_images(entries, images_dir, labels_file):
    """Path of the image of each (file name or None, label) entry; every image of images_dir needs one entry.

    A named entry is that file; entry k of the contest format is the image whose name without extension is k.
    """
    if not os.path.isdir(images_dir):
        raise UserError('--images_dir=%s: no such folder' % images_dir)
    named = entries[0][0] is not None
    images = {}
    for name in sorted((n for n in os.listdir(images_dir) if is_file_name(n)), key=natural_key):
        key = name if named else os.path.splitext(name)[0]
        if key in images:
            raise UserError('--images_dir=%s holds both %s and %s: which one is image %s?' % (
                images_dir, images[key], name, key))
        images[key] = name
    keys = [name if named else str(k) for k, (name, label) in enumerate(entries)]
    repeated = sorted(key for key, count in collections.Counter(keys).items() if count > 1)
    if repeated:
        raise UserError('--labels_file=%s labels %s more than once' % (
            labels_file, ', '.join(shorten(repeated, 5))))
    labelled = set(keys)
    unlabelled = [name for key, name in images.items() if key not in labelled]
    missing = ['line %d (%s)' % (k + 1, key if named else key + '.*') for k, key in enumerate(keys)
               if key not in images]
    if unlabelled or missing:
        raise UserError('--labels_file=%s has %d labels and --images_dir=%s %d images, not one each: '
                        'labels without images: %s; images without labels: %s' % (
                            labels_file, len(keys), images_dir, len(images), ', '.join(shorten(missing, 5)) or 'none',
                            ', '.join(shorten(unlabelled, 5)) or 'none'))
    return [os.path.join(images_dir, images[key]) for key in keys]


def split(items, train_size, seed):
    """Shuffles items with the seed -> (the first train_size, the rest)."""
    if not 0 <= train_size <= len(items):
        raise UserError('--train_size=%d: the set has %d images' % (train_size, len(items)))
    order = np.random.default_rng(seed).permutation(len(items))
    shuffled = [items[i] for i in order]
    return shuffled[:train_size], shuffled[train_size:]


def check_destinations(images_dir, train_dir, val_dir):
    """Refuses train_dir and val_dir that cannot take the copies: not folders, not writable, images_dir itself, or
    one folder for both."""
    for flag_name, directory in (('train_dir', train_dir), ('val_dir', val_dir)):
        check_writable(directory, '--%s=%s' % (flag_name, directory))
        if os.path.realpath(directory) == os.path.realpath(images_dir):
            raise UserError('--%s=%s is --images_dir: copies must go elsewhere' % (flag_name, directory))
    if os.path.realpath(train_dir) == os.path.realpath(val_dir):
        raise UserError('--train_dir=%s is --val_dir: the two parts must go to two folders' % train_dir)


def check_readable(sources, images_dir):
    """Refuses images that are not files this user may read, so that copying cannot stop half way through."""
    unreadable = [os.path.basename(path) for path in sources
                  if not os.path.isfile(path) or not os.access(path, os.R_OK)]
    if unreadable:
        raise UserError('--images_dir=%s: cannot read %d of the %d images (not files, or no read permission): %s' % (
            images_dir, len(unreadable), len(sources), ', '.join(shorten(unreadable, 5))))


def copy_images(parts):
    """Copies (source path, new name) pairs into their folders: parts is [(folder, pairs)]; shows progress."""
    progress = Progress(sum(len(pairs) for _, pairs in parts), 'rename')
    done = 0
    for directory, pairs in parts:
        os.makedirs(directory, exist_ok=True)
        for source, name in pairs:
            shutil.copyfile(source, os.path.join(directory, name))
            done += 1
            progress.update(done)
    progress.finish()


def rename(labels_file, images_dir, train_dir, val_dir, train_size, seed, overwrite):
    """Copies the labelled images of images_dir to train_dir and val_dir as `<k>_<label>.<ext>` (k: entry index),
    once everything that can be checked is: nothing is copied when a flag, a label or an image is at fault."""
    check_destinations(images_dir, train_dir, val_dir)
    entries = read_labels_file(labels_file)
    sources = find_images(entries, images_dir, labels_file)
    check_readable(sources, images_dir)
    log.info('%s: %d labels, %s format', labels_file, len(entries),
             '<file name> <label>' if entries[0][0] else 'contest (line k labels image k)')
    copies = [(source, id_label_name(k, label, os.path.splitext(source)[1]))
              for k, (source, (name, label)) in enumerate(zip(sources, entries))]
    train, val = split(copies, train_size, seed)
    targets = {os.path.join(directory, name) for directory, part in ((train_dir, train), (val_dir, val))
               for source, name in part}
    others = make_room(len(copies), [train_dir, val_dir], overwrite, targets)
    copy_images([(train_dir, train), (val_dir, val)])
    log.info('copied %d images to %s and %d to %s (seed %d)', len(train), train_dir, len(val), val_dir, seed)
    if others:
        log.warning('warning: %s and %s also hold %d images this run did not write', train_dir, val_dir, others)


# --- synth: labels -----------------------------------------------------------

OPERATORS = '+-*'

# What an image looks like, besides its id.
SynthSpec = collections.namedtuple('SynthSpec',
                                   'seed text charset min_len max_len height width fonts clutter renderer blank_share '
                                   'plain_share')


def contest_expression(rng):
    """Three single digits and two of + - *, with parentheses around two adjacent numbers or none: 5-(6+2)."""
    digits = [str(d) for d in rng.integers(0, 10, 3)]
    operators = [OPERATORS[i] for i in rng.integers(0, len(OPERATORS), 2)]
    tokens = [digits[0], operators[0], digits[1], operators[1], digits[2]]
    parentheses = rng.integers(0, 3)  # 0: none, 1: around the first two numbers, 2: around the last two
    if parentheses:
        start = 2 * (parentheses - 1)
        tokens.insert(start + 3, ')')
        tokens.insert(start, '(')
    return ''.join(tokens)


def random_text(charset, min_len, max_len, rng):
    """A string of min_len..max_len characters drawn uniformly from charset."""
    length = rng.integers(min_len, max_len + 1)
    return ''.join(charset[i] for i in rng.integers(0, len(charset), length))


def make_label(spec, rng):
    """The label of one image: a contest expression, or with spec.text 'random' a random string."""
    if spec.text == 'expression':
        return contest_expression(rng)
    return random_text(spec.charset, spec.min_len, spec.max_len, rng)


# --- synth: drawing ----------------------------------------------------------

HERSHEY_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX,
                 cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX_SMALL,
                 cv2.FONT_HERSHEY_SCRIPT_SIMPLEX, cv2.FONT_HERSHEY_SCRIPT_COMPLEX)
HERSHEY_HEIGHTS = {font: cv2.getTextSize('0', font, 1.0, 1)[0][1] for font in HERSHEY_FONTS}  # pixels at scale 1
TRUETYPE_SHARE = 0.6  # of the images, when TrueType fonts were found
LUMA = np.array([0.114, 0.587, 0.299], np.float32)  # BGR weights of perceived brightness
CLUTTER_CONTRAST = 70  # least brightness difference between clutter lines or discs and the text


@functools.lru_cache(maxsize=4096)
def truetype(path, size):
    return ImageFont.truetype(path, size)


@functools.lru_cache(maxsize=None)
def truetype_digit_height(path):
    """Pixels of a `0` per point of size."""
    left, top, right, bottom = truetype(path, 100).getbbox('0')
    return (bottom - top) / 100


def ink(font, char):
    """The inked pixels (bool [rows, cols], cropped to them) of one character drawn at 40 pixels."""
    image = Image.new('L', (160, 160))
    ImageDraw.Draw(image).text((40, 40), char, font=truetype(font, 40), fill=255)
    inked = np.asarray(image) > 64
    rows, cols = np.nonzero(inked)
    return inked[rows.min():rows.max() + 1, cols.min():cols.max() + 1] if rows.size else inked[:0, :0]


def draws_text(glyphs):
    """Whether a font's glyphs ({character: ink}) are text, not symbols: a minus wider than tall, parentheses taller
    than wide, an `8` that is not a filled block, and no two digits or signs drawn alike (a typewriter font that
    draws both parentheses as slashes, a dingbat font)."""
    minus = glyphs.get('-')
    parens = [glyphs[char] for char in '()' if char in glyphs]
    signs = [glyphs[char] for char in glyphs if not char.isalpha()]
    return ((minus is None or minus.shape[1] > 1.2 * minus.shape[0])
            and all(paren.shape[0] > paren.shape[1] for paren in parens)
            and ('8' not in glyphs or glyphs['8'].mean() < 0.8)
            and not any(alike(a, b) for k, a in enumerate(signs) for b in signs[k + 1:]))


def alike(a, b):
    """Whether two inks are the same shape: the same size within 2 pixels, 97% of pixels equal."""
    if abs(a.shape[0] - b.shape[0]) > 2 or abs(a.shape[1] - b.shape[1]) > 2:
        return False
    rows, cols = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    return (a[:rows, :cols] == b[:rows, :cols]).mean() > 0.97


def usable_fonts(patterns, characters):
    """The TrueType and OpenType files matching the glob patterns that draw every character (not their
    missing-glyph box) as text (draws_text)."""
    paths = sorted({path for pattern in patterns for path in glob.glob(os.path.expanduser(pattern), recursive=True)})
    usable = []
    for path in paths:
        try:
            font = truetype(path, 32)
            missing = bytes(font.getmask('\ue000'))
            if all(bytes(font.getmask(char)) not in (missing, b'') for char in characters) and draws_text(
                    {char: ink(path, char) for char in characters}):
                usable.append(path)
        except OSError:
            log.warning('warning: cannot read font %s', path)
    return tuple(usable)


def random_font(fonts, rng):
    """A TrueType file of `fonts` (TRUETYPE_SHARE of the time, when there are any) or a Hershey font, italic a
    third of the time."""
    if fonts and rng.random() < TRUETYPE_SHARE:
        return fonts[rng.integers(0, len(fonts))]
    return HERSHEY_FONTS[rng.integers(0, len(HERSHEY_FONTS))] | (cv2.FONT_ITALIC if rng.random() < 0.33 else 0)


def draw_char(char, font, height, thickness):
    """One character, digits `height` pixels tall, white on a black uint8 canvas with room to turn; and the row of
    its baseline. A Hershey font draws strokes `thickness` wide; a TrueType font its outlines, widened by a
    stroke of thickness // 3."""
    pad = int(height) // 2 + thickness
    if isinstance(font, str):
        face = truetype(font, max(4, round(height / truetype_digit_height(font))))
        ascent, descent = face.getmetrics()
        stroke = thickness // 3
        right = int(face.getbbox(char, stroke_width=stroke)[2])
        image = Image.new('L', (right + 2 * pad, ascent + descent + 2 * pad))
        ImageDraw.Draw(image).text((pad, pad), char, font=face, fill=255, stroke_width=stroke, stroke_fill=255)
        return np.asarray(image), pad + ascent
    scale = height / HERSHEY_HEIGHTS[font & ~cv2.FONT_ITALIC]
    (width, above), below = cv2.getTextSize(char, font, scale, thickness)
    canvas = np.zeros((above + below + 2 * pad, width + 2 * pad), np.uint8)
    cv2.putText(canvas, char, (pad, pad + above), font, scale, 255, thickness, cv2.LINE_AA)
    return canvas, pad + above


def glyph(char, font, height, thickness, rng):
    """Alpha (float32 [rows, cols], 0..1) of one character whose digits are `height` pixels tall, randomly
    rotated, sheared and stretched, cut to its inked columns; and the row of its baseline."""
    canvas, baseline = draw_char(char, font, height, thickness)
    rows, cols = canvas.shape
    centre = np.array([[1, 0, cols / 2], [0, 1, rows / 2], [0, 0, 1]])
    uncentre = np.array([[1, 0, -cols / 2], [0, 1, -rows / 2], [0, 0, 1]])
    shear = np.array([[rng.uniform(0.8, 1.25), rng.uniform(-0.3, 0.3), 0], [0, 1, 0], [0, 0, 1]])
    rotation = np.vstack([cv2.getRotationMatrix2D((0, 0), rng.uniform(-20, 20), 1.0), [0, 0, 1]])
    matrix = (centre @ rotation @ shear @ uncentre)[:2]
    canvas = cv2.warpAffine(canvas, matrix, (cols, rows), flags=cv2.INTER_LINEAR)
    inked = np.flatnonzero(canvas.max(axis=0))
    inked = inked if inked.size else np.array([0])
    return canvas[:, inked[0]:inked[-1] + 1].astype(np.float32) / 255, baseline


def text_layer(label, colours, height, fonts, rng):
    """The label drawn in one line: premultiplied colour (float32 [rows, cols, 3]) and alpha ([rows, cols]).

    Font, digit height (about `height` pixels) and stroke are chosen per image and a quarter of the characters
    vary them; spacing (touching to wide), vertical jitter, rotation and shear vary per character, and the
    baseline slants.
    """
    thickness = max(1, round(height * rng.uniform(0.03, 0.12)))
    font = random_font(fonts, rng)
    glyphs = []
    for char in label:
        varied = rng.random() < 0.25
        glyphs.append(glyph(char, random_font(fonts, rng) if varied else font, height * rng.uniform(0.85, 1.15),
                            max(1, thickness + rng.integers(-1, 2)) if varied else thickness, rng))
    gaps = rng.uniform(-0.06, 0.35, len(label)) * height
    widths = np.array([mask.shape[1] for mask, _ in glyphs])
    lefts = np.maximum(0, np.concatenate([[0], np.cumsum(widths[:-1] + gaps[:-1])])).round().astype(int)
    baselines = rng.uniform(-0.12, 0.12, len(label)) * height + rng.uniform(-0.12, 0.12) * lefts
    tops = (baselines - [b for _, b in glyphs]).round().astype(int)
    tops -= tops.min()
    rows = max(top + g.shape[0] for top, (g, _) in zip(tops, glyphs))
    cols = max(left + g.shape[1] for left, (g, _) in zip(lefts, glyphs))
    premultiplied, alpha = np.zeros((rows, cols, 3), np.float32), np.zeros((rows, cols), np.float32)
    for (mask, _), top, left, colour in zip(glyphs, tops, lefts, colours):
        area = (slice(top, top + mask.shape[0]), slice(left, left + mask.shape[1]))
        premultiplied[area] = premultiplied[area] * (1 - mask[..., None]) + mask[..., None] * colour
        alpha[area] = alpha[area] * (1 - mask) + mask
    inked_rows, inked_cols = np.flatnonzero(alpha.max(axis=1)), np.flatnonzero(alpha.max(axis=0))
    area = (slice(inked_rows[0], inked_rows[-1] + 1), slice(inked_cols[0], inked_cols[-1] + 1))
    return premultiplied[area], alpha[area]


def background(height, width, rng):
    """A near-white, light or (15%) dark tint with a gentle colour gradient: float32 [height, width, 3]."""
    low, high = ((0, 90), (150, 255), (225, 255))[rng.choice(3, p=[0.15, 0.45, 0.4])]
    tint = rng.uniform(low, high, 3)
    angle = rng.uniform(0, 2 * np.pi)
    xs, ys = np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)[:, None]
    ramp = (xs * np.cos(angle) + ys * np.sin(angle)) / max(height, width)  # [height, width], about -1..1
    return np.clip(tint + ramp[..., None] * rng.uniform(-25, 25, 3), 0, 255).astype(np.float32)


def text_colours(count, background_luminance, rng):
    """A BGR colour per character, at least a random contrast (low but readable to strong) off the background;
    a third of the images use one colour for all."""
    min_contrast = rng.uniform(80, 150)
    candidates = rng.uniform(0, 255, (count, 16, 3)).astype(np.float32)
    contrasting = np.abs(candidates @ LUMA - background_luminance) >= min_contrast
    colours = candidates[np.arange(count), contrasting.argmax(axis=1)]
    colours[~contrasting.any(axis=1)] = 0 if background_luminance > 127 else 255
    return colours[[0] * count] if rng.random() < 0.33 else colours


def clutter_colours(count, ink, rng):
    """Up to `count` random BGR colours whose brightness is CLUTTER_CONTRAST or more off that of every colour of
    the text (`ink`), so that clutter crossing a character never reads as part of it in grey."""
    candidates = rng.uniform(0, 255, (4 * count, 3)).astype(np.float32)
    distinct = np.abs((candidates @ LUMA)[:, None] - ink @ LUMA).min(axis=1) >= CLUTTER_CONTRAST
    return candidates[distinct][:count]


def add_clutter(image, ink, rng):
    """Noise dots (single pixels and small discs) and thin straight or wavy lines, in place."""
    height, width = image.shape[:2]
    pixels = rng.integers(0, 150)
    image[rng.integers(0, height, pixels), rng.integers(0, width, pixels)] = rng.uniform(0, 255, (pixels, 3))
    for colour in clutter_colours(rng.integers(0, 25), ink, rng):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(image, centre, int(rng.integers(1, 3)), colour.tolist(), -1, cv2.LINE_AA)
    for colour in clutter_colours(rng.integers(0, 4), ink, rng):
        xs = np.linspace(rng.uniform(-20, width / 2), rng.uniform(width / 2, width + 20), 16)
        ys = (rng.uniform(0, height) + rng.uniform(-0.3, 0.3) * (xs - xs[0])
              + rng.uniform(0, height / 6) * np.sin(rng.uniform(0, 0.1) * xs + rng.uniform(0, 2 * np.pi)))
        cv2.polylines(image, [np.stack([xs, ys], 1).round().astype(np.int32)], False, colour.tolist(),
                      1 if rng.random() < 0.8 else 2, cv2.LINE_AA)


def degrade(image, rng):
    """Sometimes blur, lose resolution, add pixel noise or JPEG artefacts: float32 -> uint8 [h, w, 3]."""
    height, width = image.shape[:2]
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 1.1))
    if rng.random() < 0.15:
        factor = rng.uniform(0.45, 0.8)
        small = cv2.resize(image, (round(width * factor), round(height * factor)), interpolation=cv2.INTER_AREA)
        image = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.12:
        image = image + rng.normal(0, rng.uniform(2, 7), image.shape).astype(np.float32)
    image = np.clip(image, 0, 255).round().astype(np.uint8)
    if rng.random() < 0.15:
        jpeg = cv2.imencode('.jpg', image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 90))])[1]
        image = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
    return image


def place(premultiplied, alpha, height, width, rng):
    """The text layer shrunk to fit if it must and put at a random place inside a margin: its premultiplied colour
    (float32 [height, width, 3]) and alpha ([height, width]) at the size of the image."""
    margin = int(rng.integers(1, 8))
    fit = min(1.0, (width - 2 * margin) / alpha.shape[1], (height - 2 * margin) / alpha.shape[0])
    if fit < 1:
        size = (max(1, int(alpha.shape[1] * fit)), max(1, int(alpha.shape[0] * fit)))
        premultiplied = cv2.resize(premultiplied, size, interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)
    rows, cols = alpha.shape
    top = int(rng.integers(margin, height - margin - rows + 1))
    left = int(rng.integers(margin, width - margin - cols + 1))
    placed_colour, placed_alpha = np.zeros((height, width, 3), np.float32), np.zeros((height, width), np.float32)
    placed_colour[top:top + rows, left:left + cols] = premultiplied
    placed_alpha[top:top + rows, left:left + cols] = alpha
    return placed_colour, placed_alpha


def render_classic(label, height, width, fonts, clutter, rng):
    """The label drawn by the project's own generator at a random size and place inside the image: uint8 BGR
    [height, width, 3]. clutter='over' draws the noise over the text, where a line or disc may hide a small
    operator; 'under' never hides any of it. The random draws are the same either way, so an id keeps its label,
    font, place and noise. An empty label gives background, clutter and degradation only."""
    image = background(height, width, rng)
    colours = text_colours(max(1, len(label)), float(image.mean(axis=(0, 1)) @ LUMA), rng)
    if label:
        premultiplied, alpha = place(*text_layer(label, colours, height * rng.uniform(0.3, 0.8), fonts, rng),
                                     height, width, rng)
    else:
        premultiplied, alpha = np.zeros_like(image), np.zeros(image.shape[:2], np.float32)
    if clutter == 'over':
        image = image * (1 - alpha[..., None]) + premultiplied
    add_clutter(image, colours, rng)
    if clutter == 'under':
        image = image * (1 - alpha[..., None]) + premultiplied
    return degrade(image, rng)


# --- synth: a renderer modelled on today's captcha package (0.7) ----------------
# ImageCaptcha's way of drawing, widened: each character in its own box, rotated (up to 45 degrees) and warped on
# its own, centred vertically, the boxes overlapping, a space before half of them; the line squeezed to the image
# width; one colour for the text, noise dots and an arc; a smoothing filter; any of the fonts found.

CAPTCHA_FONT_SIZES = (42, 50, 56)  # ImageCaptcha's sizes at height 60
CAPTCHA_ROTATION = 30  # degrees either way, ImageCaptcha's range
FREE_ROTATION = 45  # degrees either way, in FREE_ROTATION_SHARE of the images: shapes, not orientations
FREE_ROTATION_SHARE = 0.4
MASK_GAIN = 1.97  # ImageCaptcha pastes a character through its own brightness times this
CAPTCHA_FONT = os.path.join(os.path.dirname(captcha.__file__), 'data', 'DroidSansMono.ttf')  # ImageCaptcha's own


def captcha07_glyph(char, font, size, rotation, rng):
    """One character's coverage (float32 [rows, cols], 0..1), as ImageCaptcha draws it: drawn with a small random
    offset, cropped to its ink, turned by `rotation` degrees, stretched back to the size of its text box and warped
    through a random quadrilateral (so that a minus or an asterisk comes out as tall as a digit). Half of the
    minus signs are a thin short bar that keeps its own size, as the contest's images show them."""
    face = truetype(font, size)
    left, top, right, bottom = face.getbbox(char)
    width, height = max(1, int(right)), max(1, int(bottom))
    dx, dy = int(rng.integers(0, 5)), int(rng.integers(0, 7))
    image = Image.new('L', (width + dx, height + dy))
    thin_minus = char == '-' and rng.random() < 0.5
    if thin_minus:
        bar = max(1, round(size * rng.uniform(0.04, 0.08)))
        middle = dy + (top + bottom) // 2
        ImageDraw.Draw(image).rectangle(
            [dx + left, middle - bar // 2, dx + left + round(size * rng.uniform(0.2, 0.35)), middle + bar // 2],
            fill=255)
    elif char != ' ':
        ImageDraw.Draw(image).text((dx, dy), char, font=face, fill=255)
    image = image.crop(image.getbbox()) if image.getbbox() else image
    image = image.rotate(rotation, Image.BILINEAR, expand=True)
    if thin_minus:
        width, height = image.size
    warp_x = width * rng.uniform(0.1, 0.3)
    warp_y = height * rng.uniform(0.2, 0.3)
    x1, x2 = (int(v) for v in rng.uniform(-warp_x, warp_x, 2))
    y1, y2 = (int(v) for v in rng.uniform(-warp_y, warp_y, 2))
    wide, tall = width + abs(x1) + abs(x2), height + abs(y1) + abs(y2)
    image = image.resize((wide, tall)).transform(
        (width, height), Image.QUAD, (x1, y1, -x1, tall - y2, wide + x2, tall + y2, wide - x2, -y1), Image.BILINEAR)
    return np.asarray(image, np.float32) / 255


def captcha07_text(label, height, fonts, rng):
    """The label's character boxes (ImageCaptcha's, a space before half of them), the digits a random size of
    CAPTCHA_FONT_SIZES scaled to the image height, one font per image (a third of the images change font per
    character)."""
    limit = FREE_ROTATION if rng.random() < FREE_ROTATION_SHARE else CAPTCHA_ROTATION
    font = fonts[rng.integers(0, len(fonts))]
    per_character = rng.random() < 0.33
    glyphs = []
    for char in label:
        char_font = fonts[rng.integers(0, len(fonts))] if per_character else font
        size = max(8, round(CAPTCHA_FONT_SIZES[rng.integers(0, 3)] * height / 60 * rng.uniform(0.9, 1.1)))
        if rng.random() < 0.5:
            glyphs.append(captcha07_glyph(' ', char_font, size, 0, rng))
        glyphs.append(captcha07_glyph(char, char_font, size, rng.uniform(-limit, limit), rng))
    return glyphs


def captcha07_noise(coverage, rng):
    """ImageCaptcha's noise, in place on a coverage map [h, w]: 30 dots 3 pixels wide and an arc."""
    height, width = coverage.shape
    image = Image.fromarray(coverage)
    draw = ImageDraw.Draw(image)
    for x, y in zip(rng.integers(0, width + 1, 30), rng.integers(0, height + 1, 30)):
        draw.line(((int(x), int(y)), (int(x) - 1, int(y) - 1)), fill=1.0, width=3)
    if rng.random() < 0.7:
        x1 = int(rng.integers(0, width // 5 + 1))
        x2 = int(rng.integers(width // 5, width + 1))
        y1 = int(rng.integers(height // 5, height - height // 5 + 1))
        y2 = int(rng.integers(y1, max(y1, height - height // 5) + 1))
        draw.arc([x1, y1, max(x1, x2), y2], int(rng.integers(0, 21)), int(rng.integers(160, 201)), fill=1.0)
    return np.asarray(image, np.float32)


def render_captcha07(label, height, width, fonts, rng):
    """The label drawn as captcha 0.7 would (see above): uint8 BGR [height, width, 3]. fonts: TrueType files (at
    least one)."""
    backdrop = rng.integers(238, 256, 3).astype(np.float32)
    colour = rng.integers(10, 201, 3).astype(np.float32)
    opacity = min(1.0, float(colour @ LUMA) * MASK_GAIN / 255) * rng.integers(220, 256) / 255
    glyphs = captcha07_text(label, height, fonts, rng)
    text_width = sum(glyph.shape[1] for glyph in glyphs)
    coverage = np.zeros((height, max(width, text_width)), np.float32)
    average = text_width // max(1, len(label))
    offset = int(average * 0.1)
    for glyph in glyphs:
        rows, cols = glyph.shape
        top = (height - rows) // 2
        area = coverage[max(0, top):top + rows, offset:offset + cols]
        area[:] = np.maximum(area, glyph[max(0, -top):max(0, -top) + area.shape[0], :area.shape[1]] * opacity)
        offset += cols - int(rng.integers(0, int(0.25 * average) + 1))
    coverage = cv2.resize(coverage, (width, height), interpolation=cv2.INTER_AREA)
    coverage = np.maximum(coverage, captcha07_noise(coverage.copy(), rng) * opacity)
    image = backdrop * (1 - coverage[..., None]) + colour * coverage[..., None]
    image = cv2.filter2D(image, -1, SMOOTH_KERNEL)
    return degrade(image, rng) if rng.random() < 0.3 else np.clip(image, 0, 255).round().astype(np.uint8)


SMOOTH_KERNEL = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13  # Pillow's ImageFilter.SMOOTH


# --- synth: the contest's own generator ------------------------------------------
# captcha 0.2.4's ImageCaptcha(width=180, height=60), which drew the contest in 2017, ported to Pillow 10 with the
# change a top entry of the contest documented: a minus is neither stretched nor warped, so it stays the thin bar
# the contest's images show. As in 2017, one Python `random` stream draws everything (here seeded by seed and id),
# resizing and warping are nearest-neighbour (Pillow's default then), and a character's colour fades with its
# coverage (Pillow 4 blended text into a transparent image), which the paste mask is made from.

PASTE_MASK = [min(255, int(level * MASK_GAIN)) for level in range(256)]  # ImageCaptcha's `table`
# 0.2.4 draws 30 dots and an arc; the reference images of the contest show no arc and about a dozen dots off the
# text: the number of dots varies and a third of the images have the arc, so that a model learns both.
NOISE_DOTS = (10, 30)
ARC_SHARE = 0.3


def captcha_colour(rand, low, high):
    return tuple(rand.randint(low, high) for _ in range(3))


def contest_character(char, size, colour, rand):
    """One character in colour (r, g, b, opacity), RGBA, as 0.2.4's _draw_character draws it: drawn at a small
    random offset, cropped to its ink, turned up to 30 degrees; then (not for a minus) stretched to its text box
    plus a random margin and warped back into the box through a random quadrilateral."""
    face = truetype(CAPTCHA_FONT, size)
    width, height = (int(v) for v in face.getbbox(char)[2:])  # Pillow 4's textsize
    dx, dy = rand.randint(0, 4), rand.randint(0, 6)
    coverage = Image.new('L', (width + dx, height + dy))
    ImageDraw.Draw(coverage).text((dx, dy), char, font=face, fill=255)
    image = Image.merge('RGBA', [coverage.point(lambda level, c=c: level * c / 255) for c in colour])
    image = image.crop(image.getbbox())
    image = image.rotate(rand.uniform(-CAPTCHA_ROTATION, CAPTCHA_ROTATION), Image.BILINEAR, expand=True)
    warp_x, warp_y = width * rand.uniform(0.1, 0.3), height * rand.uniform(0.2, 0.3)
    x1, y1 = int(rand.uniform(-warp_x, warp_x)), int(rand.uniform(-warp_y, warp_y))
    x2, y2 = int(rand.uniform(-warp_x, warp_x)), int(rand.uniform(-warp_y, warp_y))
    if char == '-':
        return image
    wide, tall = width + abs(x1) + abs(x2), height + abs(y1) + abs(y2)
    image = image.resize((wide, tall), Image.NEAREST)
    return image.transform((width, height), Image.QUAD, (x1, y1, -x1, tall - y2, wide + x2, tall + y2, wide - x2, -y1),
                           Image.NEAREST)


def contest_line(label, height, width, colour, backdrop, rand):
    """The characters side by side on the backdrop, overlapping by up to a quarter of their mean width, centred
    vertically, the line squeezed to `width` when wider: RGB [height, width]."""
    sizes = [max(8, round(size * height / 60)) for size in CAPTCHA_FONT_SIZES]
    characters = [contest_character(char, rand.choice(sizes), colour, rand) for char in label]
    text_width = sum(character.size[0] for character in characters)
    image = Image.new('RGB', (max(width, text_width), height), backdrop)
    average = int(text_width / max(1, len(label)))
    offset = int(average * 0.1)
    for character in characters:
        cols, rows = character.size
        image.paste(character, (offset, int((height - rows) / 2)), character.convert('L').point(PASTE_MASK))
        offset += cols + rand.randint(-int(0.25 * average), 0)
    return image.resize((width, height), Image.NEAREST) if image.size[0] > width else image


def render_contest(label, height, width, rand):
    """The label as the contest's generator drew it (see above): uint8 BGR [height, width, 3]; rand: a
    random.Random."""
    backdrop = captcha_colour(rand, 238, 255)
    opacity = rand.randint(220, 255)
    colour = captcha_colour(rand, 0, 200) + (opacity,)
    image = contest_line(label, height, width, colour, backdrop, rand)
    draw = ImageDraw.Draw(image)
    for _ in range(rand.randint(*NOISE_DOTS)):
        x, y = rand.randint(0, width), rand.randint(0, height)
        draw.line(((x, y), (x - 1, y - 1)), fill=colour, width=3)
    x1, x2 = rand.randint(0, int(width / 5)), rand.randint(width - int(width / 5), width)
    y1 = rand.randint(int(height / 5), height - int(height / 5))
    y2 = rand.randint(y1, height - int(height / 5))
    end, start = rand.randint(160, 200), rand.randint(0, 20)
    if rand.random() < ARC_SHARE:
        draw.arc([x1, y1, x2, y2], start, end, fill=colour)
    image = image.filter(ImageFilter.SMOOTH)
    return np.asarray(image)[..., ::-1].copy()


def plain_image(height, width, rand):
    """One colour all over, as an empty scan or form field: white, black, a grey or any colour, in equal shares;
    uint8 BGR [height, width, 3]; rand: a numpy Generator."""
    kind = rand.integers(0, 4)
    colour = rand.integers(0, 256, 3) if kind == 3 else [(255, 0, rand.integers(0, 256))[kind]] * 3
    return np.full((height, width, 3), colour, np.uint8)


# --- synth: files ------------------------------------------------------------

RENDERERS = ('contest', 'captcha07', 'classic')
MIX = 'captcha07:1,classic:1'  # --renderer=mix


@functools.lru_cache(maxsize=None)
def renderer_weights(renderer):
    """--renderer as ((name, weight), ...): `contest`, `mix` or `contest:8,captcha07:1,classic:1`; a UserError
    names a value that is none of these."""
    weights = []
    for part in (MIX if renderer == 'mix' else renderer).split(','):
        name, _, weight = part.partition(':')
        if name not in RENDERERS or not (weight or '1').isdigit() or int(weight or 1) < 1:
            raise UserError('--renderer=%s: give one of %s or mix, or weights such as contest:8,captcha07:1,'
                            'classic:1' % (renderer, ', '.join(RENDERERS)))
        weights.append((name, int(weight or 1)))
    return tuple(weights)


def pick_renderer(renderer, choice):
    """The name of the renderer that draws an image: by weight, from the image's own choice generator."""
    weights = renderer_weights(renderer)
    if len(weights) == 1:
        return weights[0][0]
    ticket = choice.integers(0, sum(weight for _, weight in weights))
    for name, weight in weights:
        if ticket < weight:
            return name
        ticket -= weight


def synth_image(spec, image_id):
    """Label and PNG bytes of one image; the same spec and id always give the same bytes.

    A second generator of the same seed and id decides whether the image is blank (label '') and, for several
    renderers, which one draws it, so that each renderer's images stay what they were."""
    rng = np.random.default_rng([spec.seed, image_id])
    choice = np.random.default_rng([spec.seed, image_id, 1])
    label = '' if choice.random() < spec.blank_share else make_label(spec, rng)
    renderer = pick_renderer(spec.renderer, choice)
    if not label and spec.plain_share and choice.random() < spec.plain_share:
        image = plain_image(spec.height, spec.width, choice)
    elif renderer == 'contest':
        image = render_contest(label, spec.height, spec.width, random.Random('%d/%d' % (spec.seed, image_id)))
    elif renderer == 'captcha07':
        image = render_captcha07(label, spec.height, spec.width, spec.fonts, rng)
    else:
        image = render_classic(label, spec.height, spec.width, spec.fonts, spec.clutter, rng)
    return label, cv2.imencode('.png', image, [cv2.IMWRITE_PNG_COMPRESSION, 6])[1].tobytes()


def labels_line(image_id, label):
    """The labels file line of an image: `<id>.png <label>`, then the value of a contest expression."""
    value = expression_value(label)
    return '%d.png %s%s\n' % (image_id, label, '' if value is None else ' %d' % value)


def write_image(spec, out_dir, labelled_names, image_id):
    """Writes image `image_id` as `<id>_<label>.png` (or `<id>.png`) and returns its labels file line."""
    label, png = synth_image(spec, image_id)
    name = id_label_name(image_id, label, '.png') if labelled_names else '%d.png' % image_id
    with open(os.path.join(out_dir, name), 'wb') as image_file:
        image_file.write(png)
    return labels_line(image_id, label)


MIN_CHARACTER_WIDTH = 8  # pixels of --synth_width a character needs to stay legible


def check_synth_flags(spec, num_images, labelled_names):
    """Refuses flags synth cannot honour, naming the flag and its value."""
    if num_images < 1:
        raise UserError('--num_images=%d: must be 1 or more' % num_images)
    renderer_weights(spec.renderer)
    if spec.height < 16 or spec.width < 16:
        raise UserError('--synth_height=%d --synth_width=%d: synth needs 16x16 or more' % (spec.height, spec.width))
    if spec.text == 'random':
        Charset(spec.charset)
        unusable = sorted({c for c in spec.charset if not ' ' < c <= '~' or c in '/\\'})
        if unusable:
            raise UserError('--charset=%r has %s: synth draws printable ASCII, no spaces, / or \\' % (
                spec.charset, ' '.join(repr(c) for c in unusable)))
        check_lengths(spec, num_images, labelled_names)


def check_lengths(spec, num_images, labelled_names):
    """--min_len and --max_len of random strings: in order, the longest legible at --synth_width and, in
    `<id>_<label>.png` names, short enough for a file name."""
    if not 1 <= spec.min_len <= spec.max_len:
        raise UserError('--min_len=%d --max_len=%d: need 1 <= min_len <= max_len' % (spec.min_len, spec.max_len))
    legible = spec.width // MIN_CHARACTER_WIDTH
    if spec.max_len > legible:
        raise UserError('--max_len=%d: at most %d characters fit legibly in --synth_width=%d (%d pixels each)' % (
            spec.max_len, legible, spec.width, MIN_CHARACTER_WIDTH))
    longest_name = MAX_NAME_BYTES - len(id_label_name(num_images - 1, '', '.png'))
    if labelled_names and spec.max_len > longest_name:
        raise UserError('--max_len=%d: file names <id>_<label>.png of %d images hold labels of at most %d characters '
                        '(%d bytes a name); --nolabelled_names keeps the labels in the labels file only' % (
                            spec.max_len, num_images, longest_name, MAX_NAME_BYTES))


def check_labels_path(labels_path, overwrite):
    """Refuses a labels file synth cannot write: a folder, a file already there (without --overwrite), or a file
    in a folder that cannot be created or written in."""
    where = '--labels_file=%s' % labels_path
    if os.path.isdir(labels_path):
        raise UserError('%s is a folder: name a file to write' % where)
    if os.path.lexists(labels_path) and not overwrite:
        raise UserError('%s already exists (--overwrite replaces it)' % where)
    check_writable(os.path.dirname(os.path.abspath(labels_path)), where)


def check_synth(spec, num_images, out_dir, labels_path, labelled_names, overwrite):
    """Everything synth can check before it writes or draws anything: the flags, out_dir and the labels file."""
    check_synth_flags(spec, num_images, labelled_names)
    check_writable(out_dir, '--out_dir=%s' % out_dir)
    check_labels_path(labels_path, overwrite)


SIZE_SAMPLE = 16  # images drawn to estimate the size of all
BLOCK_BYTES = 4096  # an image file takes whole blocks of the file system


def check_free_space(spec, num_images, out_dir):
    """Refuses num_images that would not fit in the free space of out_dir's file system: the first images (the
    ones synth writes) give the mean size, their PNG bytes rounded up to whole blocks plus a labels line."""
    sample = range(min(SIZE_SAMPLE, num_images))
    sample_bytes = 0
    for sample_id in sample:
        label, png = synth_image(spec, sample_id)
        sample_bytes += -(-len(png) // BLOCK_BYTES) * BLOCK_BYTES + len(labels_line(sample_id, label).encode())
    image_bytes = sample_bytes / len(sample)
    free = shutil.disk_usage(utils.nearest_existing(out_dir)).free
    if image_bytes * num_images > free:
        raise UserError('--num_images=%d needs about %s in --out_dir=%s (about %s an image), which has %s free' % (
            num_images, size_text(image_bytes * num_images), out_dir, size_text(image_bytes), size_text(free)))


def size_text(count):
    """Bytes for a message: `4.1 KB`, `412 GB`."""
    units = ['B', 'KB', 'MB', 'GB', 'TB', 'PB']
    while count >= 999.5 and len(units) > 1:
        count, units = count / 1000, units[1:]
    return '%.3g %s' % (count, units[0])


def write_images(spec, num_images, out_dir, labelled_names, labels_file):
    """Writes images 0..num_images-1 to out_dir in parallel, showing progress, their lines to labels_file in order."""
    write = functools.partial(write_image, spec, out_dir, labelled_names)
    progress = Progress(num_images, 'synth')
    with multiprocessing.Pool(min(os.cpu_count() or 1, num_images)) as pool:
        for done, line in enumerate(pool.imap(write, range(num_images), chunksize=64), 1):
            labels_file.write(line)
            progress.update(done)
    progress.finish()


def synth(spec, num_images, out_dir, labels_path, labelled_names, overwrite):
    """Writes images 0..num_images-1 to out_dir and their labels file, once check_synth and check_free_space pass."""
    check_synth(spec, num_images, out_dir, labels_path, labelled_names, overwrite)
    check_free_space(spec, num_images, out_dir)
    os.makedirs(out_dir, exist_ok=True)
    others = make_room(num_images, [out_dir], overwrite)
    os.makedirs(os.path.dirname(os.path.abspath(labels_path)), exist_ok=True)
    with utils.atomic_file(labels_path) as labels_file:
        write_images(spec, num_images, out_dir, labelled_names, labels_file)
    log.info('wrote %d images (%s, seed %d) to %s and their labels to %s',
             num_images, spec.text, spec.seed, out_dir, labels_path)
    if others:
        log.warning('warning: %s also holds %d images this run did not write', out_dir, others)


# --- command line ------------------------------------------------------------

def synth_fonts(renderers):
    """The fonts of --font_files that draw every character the images need, for the renderers that take fonts
    (the contest's draws with DroidSansMono only)."""
    names = {name for name, _ in renderers}
    if names == {'contest'}:
        log.info('drawing with the captcha package\'s DroidSansMono')
        return ()
    characters = CONTEST_CHARSET if FLAGS.text == 'expression' else FLAGS.charset
    patterns = FLAGS.font_files + ([] if FLAGS['font_files'].present else [CAPTCHA_FONT])
    hershey = ' and the 8 Hershey fonts' if 'classic' in names else ''
    fonts = usable_fonts(patterns, characters)
    if not fonts:
        log.warning('warning: no font of --font_files draws all of %r: drawing with the captcha package\'s '
                    'DroidSansMono%s only', characters, hershey)
        return (CAPTCHA_FONT,)
    log.info('drawing with %d TrueType or OpenType fonts%s', len(fonts), hershey)
    return fonts


def run_synth():
    """synth with the flags: checked before the fonts are searched (seconds), then drawn with the fonts found."""
    spec = SynthSpec(FLAGS.seed, FLAGS.text, FLAGS.charset, FLAGS.min_len, FLAGS.max_len, FLAGS.synth_height,
                     FLAGS.synth_width, (), FLAGS.clutter, FLAGS.renderer, FLAGS.blank_share,
                     FLAGS.plain_share)
    labels_path = FLAGS.labels_file if FLAGS['labels_file'].present else os.path.join(FLAGS.out_dir, 'labels.txt')
    arguments = (FLAGS.num_images, FLAGS.out_dir, labels_path, FLAGS.labelled_names, FLAGS.overwrite)
    check_synth(spec, *arguments)
    synth(spec._replace(fonts=synth_fonts(renderer_weights(FLAGS.renderer))), *arguments)


def run(argv):
    """Dispatches on --mode: rename (also when --mode is not given) or synth."""
    if len(argv) > 1:
        raise UserError('unexpected arguments: %s' % ' '.join(argv[1:]))
    mode = FLAGS.mode or 'rename'
    if mode == 'rename':
        rename(FLAGS.labels_file, FLAGS.images_dir, FLAGS.train_dir, FLAGS.val_dir, FLAGS.train_size, FLAGS.seed,
               FLAGS.overwrite)
    elif mode == 'synth':
        run_synth()
    else:
        raise UserError('--mode=%s: helper.py does rename (the default) or synth' % mode)


def main(argv):
    utils.setup_logging()
    try:
        run(argv)
    except UserError as error:
        log.error('error: %s', error)
        raise SystemExit(2)


if __name__ == '__main__':
    utils.run(main, 'helper.py')
