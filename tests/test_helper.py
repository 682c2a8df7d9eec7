"""helper.py: rename/split of a contest-format set and the synthetic generator."""
import os
import random
import re
import shutil
import stat
import subprocess
import sys
import tracemalloc
import types

import cv2
import numpy as np
import pytest

import helper
import utils
from conftest import REPO, USER_ENVIRONMENT, run_cli
from utils import UserError, expression_value, label_from_filename

# Three single digits, two operators, parentheses around two adjacent numbers or none.
CONTEST_GRAMMAR = re.compile(r'\d[-+*]\d[-+*]\d|\(\d[-+*]\d\)[-+*]\d|\d[-+*]\(\d[-+*]\d\)')
EXPRESSION = helper.SynthSpec(seed=0, text='expression', charset='', min_len=1, max_len=8, height=60, width=180,
                               fonts=(), clutter='over', renderer='classic', blank_share=0.0,
                               plain_share=0.0)
CONTEST = EXPRESSION._replace(renderer='contest')
CAPTCHA07 = EXPRESSION._replace(renderer='captcha07', fonts=(helper.CAPTCHA_FONT,))


def write_contest_set(folder, count):
    """Images k.png (odd k) and k.bmp (even k) whose pixels encode k, and labels.txt whose line k is
    `<expression> <value>`."""
    images_dir = folder / 'contest'
    images_dir.mkdir(parents=True)
    labels = [helper.contest_expression(np.random.default_rng(k)) for k in range(count)]
    for k in range(count):
        write_encoded(str(images_dir / ('%d.%s' % (k, 'png' if k % 2 else 'bmp'))), k)
    (folder / 'labels.txt').write_text(''.join('%s %d\n' % (label, expression_value(label)) for label in labels))
    return str(folder / 'labels.txt'), str(images_dir), labels


def write_encoded(path, k):
    """A tiny image whose pixels encode k."""
    cv2.imwrite(path, np.full((2, 3, 3), (k % 256, k // 256, 7), np.uint8))


def encoded_index(path):
    """The k that write_contest_set drew into an image."""
    pixel = cv2.imread(path)[0, 0]
    return int(pixel[0]) + 256 * int(pixel[1])


def rename(folder, labels_file, images_dir, train_size, seed=0, overwrite=False):
    """helper.rename into folder/train and folder/val; returns their file names."""
    train_dir, val_dir = str(folder / 'train'), str(folder / 'val')
    helper.rename(labels_file, images_dir, train_dir, val_dir, train_size, seed, overwrite)
    return sorted(os.listdir(train_dir)), sorted(os.listdir(val_dir))


# --- rename ------------------------------------------------------------------

def test_rename_puts_each_label_on_its_image_and_splits_the_counts(tmp_path):
    labels_file, images_dir, labels = write_contest_set(tmp_path, 40)
    train, val = rename(tmp_path, labels_file, images_dir, train_size=30)
    assert (len(train), len(val)) == (30, 10)
    for folder, names in (('train', train), ('val', val)):
        for name in names:
            k = encoded_index(str(tmp_path / folder / name))
            assert name == '%d_%s.%s' % (k, labels[k], 'png' if k % 2 else 'bmp')
            assert label_from_filename(name) == labels[k]
    assert sorted(utils.image_id(name) for name in train + val) == sorted(str(k) for k in range(40))


def test_rename_split_depends_on_the_seed(tmp_path):
    labels_file, images_dir, _ = write_contest_set(tmp_path, 40)
    first = rename(tmp_path / 'a', labels_file, images_dir, 20, seed=3)
    again = rename(tmp_path / 'b', labels_file, images_dir, 20, seed=3)
    other = rename(tmp_path / 'c', labels_file, images_dir, 20, seed=4)
    assert first == again
    assert first != other


def test_rename_reads_file_name_label_lines(tmp_path):
    images_dir = tmp_path / 'images'
    images_dir.mkdir()
    for index, name in enumerate(['b.bmp', 'a_1.png', 'c.PNG']):
        write_encoded(str(images_dir / name), index)
    (tmp_path / 'labels.txt').write_text('b.bmp 1+2 3\na_1.png ab\nc.PNG (4)\n')
    train, val = rename(tmp_path, str(tmp_path / 'labels.txt'), str(images_dir), train_size=3)
    assert (train, val) == (['0_1+2.bmp', '1_ab.png', '2_(4).PNG'], [])
    for index, name in enumerate(train):
        assert encoded_index(str(tmp_path / 'train' / name)) == index


def test_rename_names_images_without_labels_and_labels_without_images(tmp_path):
    labels_file, images_dir, _ = write_contest_set(tmp_path, 12)
    os.remove(os.path.join(images_dir, '3.png'))
    open(os.path.join(images_dir, 'notes.txt'), 'w').write('not an image, not counted')
    cv2.imwrite(os.path.join(images_dir, 'stray.png'), np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(UserError, match=r'labels without images: line 4 \(3\.\*\); images without labels: stray\.png'):
        rename(tmp_path, labels_file, images_dir, 5)


def test_rename_refuses_a_train_size_larger_than_the_set(tmp_path):
    labels_file, images_dir, _ = write_contest_set(tmp_path, 12)
    with pytest.raises(UserError, match='--train_size=13: the set has 12 images'):
        rename(tmp_path, labels_file, images_dir, 13)


def test_rename_refuses_a_label_that_cannot_be_in_a_file_name(tmp_path):
    labels_file, images_dir, _ = write_contest_set(tmp_path, 12)
    lines = open(labels_file).read().splitlines()
    lines[5] = '1/2 0'
    open(labels_file, 'w').write('\n'.join(lines))
    with pytest.raises(UserError, match=r"line 6: label '1/2' has '/'"):
        rename(tmp_path, labels_file, images_dir, 5)
    assert not os.path.exists(tmp_path / 'train')


def test_rename_overwrites_only_when_asked_and_keeps_each_id_once(tmp_path):
    labels_file, images_dir, _ = write_contest_set(tmp_path, 12)
    rename(tmp_path, labels_file, images_dir, 6, seed=0)
    with pytest.raises(UserError, match='12 images with the ids to write already exist'):
        rename(tmp_path, labels_file, images_dir, 6, seed=1)
    train, val = rename(tmp_path, labels_file, images_dir, 6, seed=1, overwrite=True)
    assert sorted(utils.image_id(name) for name in train + val) == sorted(str(k) for k in range(12))


def blocked_folder(tmp_path, monkeypatch, case):
    """A folder flag's value that cannot be written into: an existing file, a folder under a file, or a folder in a
    place this user may not write (os.access says so, for root may write anywhere)."""
    (tmp_path / 'file').write_text('not a folder')
    if case == 'file':
        return str(tmp_path / 'file')
    if case == 'under a file':
        return str(tmp_path / 'file' / 'sub')
    locked = str(tmp_path / 'locked')
    os.mkdir(locked)
    access = os.access
    monkeypatch.setattr(os, 'access', lambda path, mode: access(path, mode) and os.path.abspath(path) != locked)
    return os.path.join(locked, 'sub')


@pytest.mark.parametrize('case, message', [('file', 'is a file, not a folder'),
                                           ('under a file', 'is a file, not a folder'),
                                           ('locked', 'no permission to create folders in')])
@pytest.mark.parametrize('flag', ['train_dir', 'val_dir'])
def test_rename_refuses_folders_it_cannot_write_before_copying_anything(tmp_path, monkeypatch, flag, case, message):
    labels_file, images_dir, _ = write_contest_set(tmp_path, 6)
    folders = {'train_dir': str(tmp_path / 'train'), 'val_dir': str(tmp_path / 'val')}
    folders[flag] = blocked_folder(tmp_path, monkeypatch, case)
    with pytest.raises(UserError, match='--%s=%s: .*%s' % (flag, re.escape(folders[flag]), message)):
        helper.rename(labels_file, images_dir, folders['train_dir'], folders['val_dir'], 3, 0, False)
    assert not (tmp_path / 'train').exists() and not (tmp_path / 'val').exists()


def test_rename_copies_nothing_when_an_image_cannot_be_read(tmp_path, monkeypatch):
    labels_file, images_dir, _ = write_contest_set(tmp_path, 6)
    unreadable = os.path.join(images_dir, '5.png')
    access = os.access
    monkeypatch.setattr(os, 'access', lambda path, mode: access(path, mode) and path != unreadable)
    with pytest.raises(UserError, match=r'--images_dir=.*: cannot read 1 of the 6 images \(not files, or no read '
                                        r'permission\): 5\.png'):
        rename(tmp_path, labels_file, images_dir, 3)
    assert not (tmp_path / 'train').exists() and not (tmp_path / 'val').exists()


# --- synth -------------------------------------------------------------------

def test_synth_same_seed_gives_the_same_bytes_another_seed_others():
    label, png = helper.synth_image(EXPRESSION, 7)
    assert helper.synth_image(EXPRESSION, 7) == (label, png)
    assert helper.synth_image(EXPRESSION._replace(seed=1), 7)[1] != png
    assert helper.synth_image(EXPRESSION._replace(seed=1), 6)[1] != png  # seeds are not shifted ids
    assert helper.synth_image(EXPRESSION, 8)[1] != png


def test_contest_expressions_follow_the_grammar():
    labels = [helper.contest_expression(np.random.default_rng(k)) for k in range(300)]
    assert all(CONTEST_GRAMMAR.fullmatch(label) for label in labels), labels
    assert all(expression_value(label) is not None for label in labels)
    assert {len(label) for label in labels} == {5, 7}
    assert {label.find('(') for label in labels} == {-1, 0, 2}
    assert set(''.join(labels)) == set('0123456789+-*()')


def test_random_text_keeps_to_the_charset_and_lengths():
    spec = EXPRESSION._replace(text='random', charset='ab.', min_len=2, max_len=4)
    labels = [helper.make_label(spec, np.random.default_rng(k)) for k in range(200)]
    assert set(''.join(labels)) == set('ab.')
    assert {len(label) for label in labels} == {2, 3, 4}


def test_clutter_never_takes_the_grey_level_of_the_text():
    rng = np.random.default_rng(3)
    ink = np.array([[20, 30, 40], [200, 90, 60]], np.float32)  # brightness about 32 and 99
    colours = helper.clutter_colours(200, ink, rng)
    assert 0 < len(colours) <= 200
    brightness = colours @ helper.LUMA
    assert (np.abs(brightness[:, None] - ink @ helper.LUMA) >= helper.CLUTTER_CONTRAST).all()
    assert brightness.max() > 200  # the colours still spread over what is allowed
    assert len(helper.clutter_colours(50, np.array([[0, 0, 0], [128, 128, 128], [255, 255, 255]]), rng)) == 0


@pytest.mark.parametrize('clutter', ['over', 'under'])
def test_clutter_over_the_text_hides_some_of_it_and_under_the_text_none(monkeypatch, clutter):
    seen = {}
    place, add_clutter = helper.place, helper.add_clutter

    def recorded_place(*args):
        seen['colour'], seen['alpha'] = place(*args)
        return seen['colour'], seen['alpha']

    def recorded_clutter(image, ink, rng):
        before = image.copy()
        add_clutter(image, ink, rng)
        seen['cluttered'] = (image != before).any(axis=2)

    monkeypatch.setattr(helper, 'place', recorded_place)
    monkeypatch.setattr(helper, 'add_clutter', recorded_clutter)
    monkeypatch.setattr(helper, 'degrade', lambda image, rng: image)
    crossings, hidden = 0, 0
    for k in range(40):
        image = helper.render_classic('8-(4*7)', 60, 180, (), clutter, np.random.default_rng(k))
        inked = seen['alpha'] > 0.999
        crossings += (inked & seen['cluttered']).sum()
        hidden += (np.abs(image[inked] - seen['colour'][inked]) > 0.3).any(axis=1).sum()  # 255 * (1 - 0.999)
    assert crossings > 100  # clutter did cross the text
    assert (hidden > 100) if clutter == 'over' else (hidden == 0)


def test_synth_writes_labelled_images_and_their_labels_file(tmp_path):
    out_dir, labels_path = str(tmp_path / 'synth'), str(tmp_path / 'synth' / 'labels.txt')
    helper.synth(EXPRESSION, 20, out_dir, labels_path, labelled_names=True, overwrite=False)
    lines = open(labels_path).read().splitlines()
    assert len(lines) == 20
    for image_id, line in enumerate(lines):
        name, label, value = line.split(' ')
        assert name == '%d.png' % image_id and CONTEST_GRAMMAR.fullmatch(label)
        assert int(value) == expression_value(label)
        image = cv2.imread(os.path.join(out_dir, '%d_%s.png' % (image_id, label)), cv2.IMREAD_UNCHANGED)
        assert image.shape == (60, 180, 3)
    assert len(os.listdir(out_dir)) == 21
    with pytest.raises(UserError, match='already exists'):
        helper.synth(EXPRESSION, 20, out_dir, labels_path, labelled_names=True, overwrite=False)


def test_synth_without_labels_in_names_makes_a_set_rename_reads(tmp_path):
    spec = EXPRESSION._replace(text='random', charset='0123456789', min_len=3, max_len=6, height=32, width=100)
    helper.synth(spec, 8, str(tmp_path / 'plain'), str(tmp_path / 'labels.txt'), labelled_names=False,
                 overwrite=False)
    assert sorted(os.listdir(tmp_path / 'plain')) == ['%d.png' % i for i in range(8)]
    labels = [line.split(' ')[1] for line in open(tmp_path / 'labels.txt').read().splitlines()]
    train, val = rename(tmp_path, str(tmp_path / 'labels.txt'), str(tmp_path / 'plain'), train_size=8)
    assert sorted(train) == sorted('%d_%s.png' % (k, label) for k, label in enumerate(labels))
    assert cv2.imread(str(tmp_path / 'train' / train[0])).shape == (32, 100, 3)


@pytest.mark.parametrize('changes, message', [
    ({'text': 'random', 'charset': 'ab c'}, r"--charset='ab c' has ' '"),
    ({'text': 'random', 'charset': '0é'}, r"has 'é'"),
    ({'text': 'random', 'charset': 'a/'}, r"has '/'"),
    ({'text': 'random', 'charset': 'aa'}, r'repeats'),
    ({'text': 'random', 'charset': 'ab', 'min_len': 5, 'max_len': 4}, r'--min_len=5 --max_len=4'),
    ({'text': 'random', 'charset': 'ab', 'max_len': 400},
     r'--max_len=400: at most 22 characters fit legibly in --synth_width=180 \(8 pixels each\)'),
    ({'text': 'random', 'charset': 'ab', 'min_len': 23, 'max_len': 23}, r'--max_len=23: at most 22 characters'),
    ({'text': 'random', 'charset': 'ab', 'max_len': 300, 'width': 4000},
     r'--max_len=300: file names <id>_<label>.png of 5 images hold labels of at most 249 characters'),
    ({'height': 8}, r'--synth_height=8'),
])
def test_synth_refuses_flags_it_cannot_honour(tmp_path, changes, message):
    with pytest.raises(UserError, match=message):
        helper.synth(EXPRESSION._replace(**changes), 5, str(tmp_path), str(tmp_path / 'labels.txt'), True, False)
    assert os.listdir(tmp_path) == []


def test_synth_keeps_long_labels_out_of_file_names_when_asked(tmp_path):
    spec = EXPRESSION._replace(text='random', charset='ab', min_len=300, max_len=300, width=4000)
    helper.check_synth(spec, 5, str(tmp_path / 'out'), str(tmp_path / 'labels.txt'), False, False)
    with pytest.raises(UserError, match='--max_len=300'):
        helper.check_synth(spec, 5, str(tmp_path / 'out'), str(tmp_path / 'labels.txt'), True, False)


@pytest.mark.parametrize('case, message', [('file', 'is a file, not a folder'),
                                           ('under a file', 'is a file, not a folder'),
                                           ('locked', 'no permission to create folders in')])
def test_synth_refuses_an_out_dir_it_cannot_write_before_drawing(tmp_path, monkeypatch, case, message):
    out_dir = blocked_folder(tmp_path, monkeypatch, case)
    monkeypatch.setattr(helper, 'write_images', lambda *args: pytest.fail('images drawn'))
    with pytest.raises(UserError, match='--out_dir=%s: .*%s' % (re.escape(out_dir), message)):
        helper.synth(EXPRESSION, 5, out_dir, str(tmp_path / 'labels.txt'), True, False)


@pytest.mark.parametrize('where', ['folder', 'under a file'])
def test_synth_refuses_a_labels_file_it_cannot_write_before_drawing(tmp_path, monkeypatch, where):
    (tmp_path / 'folder').mkdir()
    (tmp_path / 'file').write_text('not a folder')
    labels_path = str(tmp_path / ('folder' if where == 'folder' else 'file/labels.txt'))
    monkeypatch.setattr(helper, 'write_images', lambda *args: pytest.fail('images drawn'))
    with pytest.raises(UserError, match='--labels_file=%s' % re.escape(labels_path)):
        helper.synth(EXPRESSION, 5, str(tmp_path / 'out'), labels_path, True, False)
    assert not (tmp_path / 'out').exists()


def test_make_room_counts_ids_0_to_count_minus_1_as_written_and_removes_only_those(tmp_path):
    for name in ('3_1+2.png', '9.bmp', '007_a.png', '12_b.png', 'x.png', 'notes.txt'):
        (tmp_path / name).write_bytes(b'')
    with pytest.raises(UserError, match='2 images with the ids to write already exist'):
        helper.make_room(10, [str(tmp_path)], overwrite=False)
    assert helper.make_room(10, [str(tmp_path)], overwrite=True) == 3  # 007_a, 12_b and x are other images
    assert sorted(os.listdir(tmp_path)) == ['007_a.png', '12_b.png', 'notes.txt', 'x.png']


def free_space(monkeypatch, free):
    """shutil.disk_usage, as helper.py calls it, reports `free` bytes free on every file system."""
    monkeypatch.setattr(shutil, 'disk_usage', lambda path: types.SimpleNamespace(free=free))


def test_synth_refuses_more_images_than_the_free_space_before_writing_or_removing_anything(tmp_path, monkeypatch):
    out_dir, labels_path = tmp_path / 'out', tmp_path / 'out' / 'labels.txt'
    out_dir.mkdir()
    (out_dir / '3_1+2.png').write_bytes(b'an earlier image, which --overwrite would replace')
    labels_path.write_text('an earlier labels file\n')
    free_space(monkeypatch, 10 ** 6)
    monkeypatch.setattr(helper, 'write_images', lambda *args: pytest.fail('images drawn'))
    with pytest.raises(UserError, match=r'^--num_images=100000 needs about [\d.]+ [KMG]?B in --out_dir=%s \(about '
                                        r'[\d.]+ KB an image\), which has 1 MB free$' % re.escape(str(out_dir))):
        helper.synth(EXPRESSION, 10 ** 5, str(out_dir), str(labels_path), labelled_names=True, overwrite=True)
    assert sorted(os.listdir(out_dir)) == ['3_1+2.png', 'labels.txt']
    assert labels_path.read_text() == 'an earlier labels file\n'
    free_space(monkeypatch, 10 ** 9)
    with pytest.raises(UserError, match='--num_images=1000000 needs about .* which has 1 GB free'):
        helper.synth(EXPRESSION, 10 ** 6, str(tmp_path / 'a' / 'b'), str(labels_path), True, True)
    assert not (tmp_path / 'a').exists()  # the free space of the nearest folder that exists


def test_cli_synth_of_10_to_the_8_images_ends_quickly_with_the_disk_error_in_bounded_memory(tmp_path):
    limit = 4 << 30  # bytes of address space: the 10^8 ids as strings alone took 6.7 GB
    code = ('import resource, runpy, shutil, sys, types; resource.setrlimit(resource.RLIMIT_AS, (%d, %d)); '
            'shutil.disk_usage = lambda path: types.SimpleNamespace(free=10 ** 9); '
            'sys.path.insert(0, %r); sys.argv[0] = "helper.py"; runpy.run_path(%r, run_name="__main__")' % (
                limit, limit, REPO, os.path.join(REPO, 'helper.py')))
    result = subprocess.run([sys.executable, '-c', code, '--mode=synth', '--num_images=100000000',
                             '--renderer=contest', '--out_dir=%s' % (tmp_path / 'out')],
                            capture_output=True, text=True, timeout=60, env=USER_ENVIRONMENT)
    assert result.returncode == 2, result.stderr
    assert re.search(r'^error: --num_images=100000000 needs about [\d.]+ TB in --out_dir=%s \(about [\d.]+ KB an '
                     r'image\), which has 1 GB free$' % re.escape(str(tmp_path / 'out')), result.stderr, re.M)
    assert 'Traceback' not in result.stderr and not (tmp_path / 'out').exists()


def write_image_until_100(spec, out_dir, labelled_names, image_id, write_image=helper.write_image):
    """write_image that fails from image 100 on, as on a full disk."""
    if image_id >= 100:
        raise OSError(28, 'No space left on device')
    return write_image(spec, out_dir, labelled_names, image_id)


def test_synth_streams_its_ids_and_leaves_no_labels_file_when_writing_fails(tmp_path, monkeypatch):
    out_dir, labels_path = tmp_path / 'out', tmp_path / 'labels' / 'labels.txt'
    out_dir.mkdir()
    (out_dir / '5_1+2.png').write_bytes(b'an earlier image')
    free_space(monkeypatch, 10 ** 15)
    monkeypatch.setattr(helper, 'write_image', write_image_until_100)
    tracemalloc.start()
    try:
        with pytest.raises(OSError, match='No space left on device'):
            helper.synth(CONTEST, 10 ** 6, str(out_dir), str(labels_path), labelled_names=True, overwrite=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2 ** 20, peak  # a list of the 10^6 ids as strings alone takes about 60 MB
    assert os.listdir(tmp_path / 'labels') == []  # neither the labels file nor its temporary file
    assert 100 <= len(os.listdir(out_dir)) < 10 ** 6 and not (out_dir / '5_1+2.png').exists()


def test_synth_writes_the_labels_of_the_images_in_order_over_the_earlier_file_keeping_its_mode(tmp_path):
    spec = EXPRESSION._replace(text='random', charset='ab1', min_len=1, max_len=4, height=24, width=64)
    labels_path = tmp_path / 'labels' / 'labels.txt'
    labels_path.parent.mkdir()
    labels_path.write_text('an earlier labels file\n')
    labels_path.chmod(0o640)
    helper.synth(spec, 20, str(tmp_path / 'out'), str(labels_path), labelled_names=False, overwrite=True)
    expected = [helper.synth_image(spec, image_id) for image_id in range(20)]
    assert labels_path.read_text() == ''.join(helper.labels_line(k, label) for k, (label, _) in enumerate(expected))
    assert [(tmp_path / 'out' / ('%d.png' % k)).read_bytes() for k in range(20)] == [png for _, png in expected]
    assert os.listdir(tmp_path / 'labels') == ['labels.txt'] and len(os.listdir(tmp_path / 'out')) == 20
    assert stat.S_IMODE(labels_path.stat().st_mode) == 0o640


def test_synth_refuses_no_images(tmp_path):
    with pytest.raises(UserError, match='--num_images=0'):
        helper.synth(EXPRESSION, 0, str(tmp_path), str(tmp_path / 'labels.txt'), True, False)


# --- command line ------------------------------------------------------------

@pytest.mark.slow
def test_cli_synth_then_rename_without_mode(tmp_path):
    synth = run_cli('--mode=synth', '--out_dir=%s' % (tmp_path / 'contest'), '--num_images=6', '--seed=5',
                    '--nolabelled_names', '--labels_file=%s' % (tmp_path / 'labels.txt'), script='helper.py')
    assert synth.returncode == 0, synth.stderr
    assert 'wrote 6 images' in synth.stdout and 'synth: 6/6 images (100.0%)' in synth.stdout
    split = run_cli('--labels_file=%s' % (tmp_path / 'labels.txt'), '--images_dir=%s' % (tmp_path / 'contest'),
                    '--train_dir=%s' % (tmp_path / 'train'), '--val_dir=%s' % (tmp_path / 'val'), '--train_size=4',
                    script='helper.py')
    assert split.returncode == 0, split.stderr
    assert 'copied 4 images' in split.stdout and 'rename: 6/6 images (100.0%)' in split.stdout
    assert (len(os.listdir(tmp_path / 'train')), len(os.listdir(tmp_path / 'val'))) == (4, 2)


@pytest.mark.slow
def test_cli_refuses_a_main_py_mode():
    result = run_cli('--mode=train', script='helper.py')
    assert result.returncode == 2
    assert 'error: --mode=train' in result.stderr and 'Traceback' not in result.stderr


@pytest.mark.slow
def test_cli_names_a_flag_value_that_does_not_parse(tmp_path):
    result = run_cli('--mode=synth', '--clutter=sideways', '--out_dir=%s' % (tmp_path / 'out'), script='helper.py')
    assert result.returncode == 2
    assert 'error: flag --clutter=sideways: value should be one of <over|under>' in result.stderr
    assert 'Traceback' not in result.stderr and not os.path.exists(tmp_path / 'out')


@pytest.mark.slow
def test_cli_synth_draws_the_clutter_under_the_text_when_asked(tmp_path):
    for clutter in ('over', 'under'):
        result = run_cli('--mode=synth', '--renderer=classic', '--clutter=%s' % clutter,
                         '--out_dir=%s' % (tmp_path / clutter), '--num_images=2', '--seed=4', '--font_files=',
                         script='helper.py')
        assert result.returncode == 0, result.stderr
    for image_id in range(2):
        label, png = helper.synth_image(EXPRESSION._replace(seed=4, clutter='under', fonts=(helper.CAPTCHA_FONT,)),
                                        image_id)
        name = '%d_%s.png' % (image_id, label)
        over = tmp_path / 'over' / name  # the same id keeps its label: only pixels change
        assert (tmp_path / 'under' / name).read_bytes() == png != over.read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize('flags, message', [
    (['--mode=synth', '--out_dir={file}'], 'error: --out_dir={file}: {file} is a file, not a folder'),
    (['--mode=synth', '--text=random', '--max_len=400', '--out_dir={tmp}/out'],
     'error: --max_len=400: at most 22 characters fit legibly in --synth_width=180'),
    (['--labels_file={tmp}/labels.txt', '--images_dir={tmp}/contest', '--train_size=3', '--train_dir={tmp}/train',
      '--val_dir={file}/val'], 'error: --val_dir={file}/val: {file} is a file, not a folder')])
def test_cli_names_the_flag_that_cannot_be_honoured_before_writing(tmp_path, flags, message):
    write_contest_set(tmp_path, 6)
    (tmp_path / 'file').write_text('not a folder')
    names = {'tmp': tmp_path, 'file': tmp_path / 'file'}
    result = run_cli(*[flag.format(**names) for flag in flags], script='helper.py')
    assert result.returncode == 2
    assert message.format(**names) in result.stderr and 'Traceback' not in result.stderr
    assert not any((tmp_path / folder).exists() for folder in ('out', 'train'))


@pytest.mark.slow
def test_cli_names_the_missing_image(tmp_path):
    labels_file, images_dir, _ = write_contest_set(tmp_path, 5)
    os.remove(os.path.join(images_dir, '4.bmp'))
    result = run_cli('--labels_file=%s' % labels_file, '--images_dir=%s' % images_dir, '--train_size=2',
                     '--train_dir=%s' % (tmp_path / 'train'), '--val_dir=%s' % (tmp_path / 'val'), script='helper.py')
    assert result.returncode == 2
    assert 'error: ' in result.stderr and 'line 5 (4.*)' in result.stderr and 'Traceback' not in result.stderr
    assert not os.path.exists(tmp_path / 'train')


def test_truetype_characters_are_drawn_at_the_digit_height():
    canvas, baseline = helper.draw_char('8', helper.CAPTCHA_FONT, 30, 3)
    inked_rows = np.flatnonzero(canvas.max(axis=1) > 127)
    assert abs(inked_rows[-1] - inked_rows[0] + 1 - 30) <= 3 and abs(inked_rows[-1] + 1 - baseline) <= 2
    spec = EXPRESSION._replace(fonts=(helper.CAPTCHA_FONT,))
    assert helper.synth_image(spec, 3) == helper.synth_image(spec, 3)


def test_fonts_that_draw_symbols_instead_of_text_are_not_used(tmp_path):
    assert helper.usable_fonts([helper.CAPTCHA_FONT], utils.CONTEST_CHARSET) == (helper.CAPTCHA_FONT,)
    glyphs = {char: helper.ink(helper.CAPTCHA_FONT, char) for char in utils.CONTEST_CHARSET}
    assert helper.draws_text(glyphs)
    slashes = dict(glyphs, **{')': glyphs['(']})  # a typewriter font that draws both parentheses as `/`
    dingbats = dict(glyphs, **{'(': np.ones((20, 30), bool)})  # a picture wider than tall
    tall_minus = dict(glyphs, **{'-': glyphs['-'].T})
    block = dict(glyphs, **{'8': np.ones((30, 20), bool)})
    assert not any(helper.draws_text(font) for font in (slashes, dingbats, tall_minus, block))
    (tmp_path / 'broken.ttf').write_bytes(b'not a font')
    assert helper.usable_fonts([str(tmp_path / '*.ttf')], utils.CONTEST_CHARSET) == ()


def inked(png):
    """Pixels of an image clearly darker than its background (the brightest tenth)."""
    grey = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE).astype(int)
    return grey < np.percentile(grey, 90) - 60


@pytest.mark.parametrize('spec', [CONTEST, CAPTCHA07], ids=['contest', 'captcha07'])
def test_captcha_renderers_are_deterministic_and_draw_text_across_the_image(spec):
    label, png = helper.synth_image(spec, 5)
    assert CONTEST_GRAMMAR.fullmatch(label)
    assert helper.synth_image(spec, 5) == (label, png)
    assert helper.synth_image(spec, 6)[1] != png
    assert helper.synth_image(spec._replace(seed=1), 5)[1] != png
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (60, 180, 3)
    columns = np.flatnonzero(inked(png).any(axis=0))
    assert columns[-1] - columns[0] > 90  # seven characters spread over more than half the width


def test_contest_renderer_keeps_the_minus_thin_and_stretches_other_characters_to_their_box():
    colour = (40, 90, 120, 255)
    for seed in range(10):
        minus = helper.contest_character('-', 50, colour, random.Random(seed))
        plus = helper.contest_character('+', 50, colour, random.Random(seed))
        face_height = int(helper.truetype(helper.CAPTCHA_FONT, 50).getbbox('+')[3])
        assert (np.asarray(minus)[..., 3] > 128).sum(axis=0).max() <= 8  # a bar a few pixels thick, turned
        assert plus.size[1] == face_height  # warped back into its text box, as tall as the box


def test_contest_images_are_drawn_in_one_colour_on_a_light_backdrop():
    for image_id in range(8):
        image = cv2.imdecode(np.frombuffer(helper.synth_image(CONTEST, image_id)[1], np.uint8), cv2.IMREAD_COLOR)
        corners = image[[0, 0, -1, -1], [0, -1, 0, -1]].astype(int)
        assert (np.median(image.reshape(-1, 3), axis=0) >= 230).all()  # backdrop 238..255, smoothed
        assert (image.min(axis=(0, 1)) <= 215).all() and corners.min() >= 200


def tilt_from_vertical(coverage):
    """Degrees between the main axis of a glyph's ink and the vertical."""
    moments = cv2.moments((coverage > 0.5).astype(np.uint8), binaryImage=True)
    axis = 0.5 * np.degrees(np.arctan2(2 * moments['mu11'], moments['mu20'] - moments['mu02']))  # from horizontal
    return 90 - abs(axis)


def test_captcha07_glyphs_turn_by_the_angle_asked_up_to_the_free_rotation_limit():
    for seed in range(5):
        rng = np.random.default_rng(seed)
        assert tilt_from_vertical(helper.captcha07_glyph('1', helper.CAPTCHA_FONT, 50, 0, rng)) < 20
        turned = helper.captcha07_glyph('1', helper.CAPTCHA_FONT, 50, helper.FREE_ROTATION, rng)
        assert 25 < tilt_from_vertical(turned) < 65


@pytest.mark.parametrize('renderer, names', [('mix', ('captcha07', 'classic')),
                                              ('contest:3,captcha07:1,classic:1', ('contest', 'captcha07', 'classic'))])
def test_several_renderers_each_draw_some_images_exactly_as_they_draw_alone(renderer, names):
    spec = EXPRESSION._replace(fonts=(helper.CAPTCHA_FONT,))
    mixed = [helper.synth_image(spec._replace(renderer=renderer), i) for i in range(24)]
    alone = {name: [helper.synth_image(spec._replace(renderer=name), i) for i in range(24)] for name in names}
    assert all(len({drawn[i][0] for drawn in alone.values()}) == 1 for i in range(24))  # an id keeps its label
    drawn_by = [[name for name in names if alone[name][i] == mixed[i]] for i in range(24)]
    assert all(len(by) == 1 for by in drawn_by)
    counts = {name: sum(by == [name] for by in drawn_by) for name in names}
    assert all(count >= 2 for count in counts.values()), counts
    if renderer.startswith('contest:3'):
        assert counts['contest'] > max(counts['captcha07'], counts['classic'])


@pytest.mark.parametrize('renderer', ['fancy', 'contest:0', 'contest:x', 'contest,', 'mix:2'])
def test_a_renderer_that_is_not_one_is_refused_by_name(renderer):
    with pytest.raises(UserError, match='--renderer=%s' % re.escape(renderer)):
        helper.renderer_weights(renderer)


def test_blank_share_draws_images_without_text_named_with_an_empty_label(tmp_path):
    spec = CAPTCHA07._replace(renderer='mix', blank_share=0.5)
    labels = [helper.synth_image(spec, i)[0] for i in range(40)]
    assert 10 <= labels.count('') <= 30 and all(CONTEST_GRAMMAR.fullmatch(l) for l in labels if l)
    helper.synth(spec, 12, str(tmp_path / 'out'), str(tmp_path / 'labels.txt'), labelled_names=True,
                 overwrite=False)
    names = os.listdir(tmp_path / 'out')
    blanks = [n for n in names if n.endswith('_.png')]
    assert blanks and all(label_from_filename(n) == '' for n in blanks)
    assert all(inked(helper.synth_image(spec, i)[1]).sum() < 400 for i in range(40) if not labels[i])


def test_plain_share_draws_that_share_of_the_blank_images_in_one_colour_and_leaves_the_others_as_they_were():
    spec = CAPTCHA07._replace(renderer='mix', blank_share=0.5)
    plain = spec._replace(plain_share=0.5)
    blanks = uniform = 0
    for image_id in range(60):
        (label, png), (plain_label, plain_png) = helper.synth_image(spec, image_id), helper.synth_image(plain, image_id)
        one_colour = cv2.imdecode(np.frombuffer(plain_png, np.uint8), cv2.IMREAD_COLOR).std(axis=(0, 1)).max() == 0
        assert plain_label == label and (one_colour or plain_png == png) and not (one_colour and label)
        blanks, uniform = blanks + (label == ''), uniform + one_colour
    assert 5 <= uniform <= blanks - 5


def test_cli_synth_contest_renderer(tmp_path):
    result = run_cli('--mode=synth', '--renderer=contest', '--out_dir=%s' % (tmp_path / 'out'), '--num_images=3',
                     '--seed=2', script='helper.py')
    assert result.returncode == 0, result.stderr
    assert "drawing with the captcha package's DroidSansMono" in result.stdout
    names = [name for name in os.listdir(tmp_path / 'out') if name.endswith('.png')]
    assert len(names) == 3
    for name in names:
        label, png = helper.synth_image(CONTEST._replace(seed=2), int(utils.image_id(name)))
        assert name == '%s_%s.png' % (utils.image_id(name), label)
        assert (tmp_path / 'out' / name).read_bytes() == png


def test_cli_synth_captcha07_without_fonts_falls_back_to_droid_sans_mono(tmp_path):
    result = run_cli('--mode=synth', '--renderer=captcha07', '--out_dir=%s' % (tmp_path / 'out'), '--num_images=3',
                     '--seed=2', '--font_files=', script='helper.py')
    assert result.returncode == 0, result.stderr
    assert 'no font of --font_files draws all of' in result.stderr
    for name in os.listdir(tmp_path / 'out'):
        if name.endswith('.png'):
            assert (tmp_path / 'out' / name).read_bytes() == helper.synth_image(
                CAPTCHA07._replace(seed=2), int(utils.image_id(name)))[1]


def test_cli_synth_refuses_an_unknown_renderer_by_name(tmp_path):
    result = run_cli('--mode=synth', '--renderer=contest:2,pillow:1', '--out_dir=%s' % (tmp_path / 'out'),
                     script='helper.py')
    assert result.returncode == 2 and '--renderer=contest:2,pillow:1' in result.stderr
    assert not (tmp_path / 'out').exists()


def test_helper_starts_without_tensorflow_and_lists_only_its_own_flags():
    loaded = subprocess.run([sys.executable, '-c', 'import sys; sys.argv = ["helper.py"]; sys.path.insert(0, %r); '
                             'import helper; print(sorted({"tensorflow", "cnn_lstm_otc_ocr"} & set(sys.modules)))'
                             % REPO], capture_output=True, text=True)
    assert loaded.stdout.strip() == '[]', loaded.stderr
    shown = run_cli('--help', script='helper.py')
    assert shown.returncode == 0 and '--synth_height' in shown.stdout and '--seed' in shown.stdout
    assert '--batch_size' not in shown.stdout and '--checkpoint_dir' not in shown.stdout
    refused = run_cli('--mode=synth', '--batch_size=8', script='helper.py')
    assert refused.returncode == 2 and 'error: --batch_size: not a flag of helper.py' in refused.stderr
