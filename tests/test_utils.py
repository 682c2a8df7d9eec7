"""utils.py: label parsing, charset, metrics, folder checks, image files, flags and saved architectures."""
import io
import logging
import os
import socket
import stat
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

import utils
from conftest import REPO, hdr_of, png_claiming, write_text_images

CHARSET = utils.Charset('0123456789+-*()')


@pytest.mark.parametrize('name, label', [
    ('12_(3-7)*5.png', '(3-7)*5'), ('a_b_c.jpg', 'b_c'), ('/x/y/7_42.JPEG', '42'), ('3_.png', ''),
    ('nolabel.png', None)])
def test_label_is_everything_after_the_first_underscore(name, label):
    assert utils.label_from_filename(name) == label


def test_natural_order_puts_2_before_10():
    assert sorted(['10.png', '2.png', 'a1.png', '1.png'], key=utils.natural_key) == \
        ['1.png', '2.png', '10.png', 'a1.png']


def test_charset_round_trip_and_blank():
    ids = CHARSET.encode('(3-7)*5')
    assert ids == [13, 3, 11, 7, 14, 12, 5]
    assert CHARSET.decode(ids) == '(3-7)*5'
    assert CHARSET.num_classes == 16
    assert CHARSET.decode([15, -1, 1]) == '1'  # blank and padding are not characters
    assert CHARSET.unknown('1a+b') == ['a', 'b']


def test_charset_refuses_empty_and_repeated():
    with pytest.raises(utils.UserError, match='empty'):
        utils.Charset('')
    with pytest.raises(utils.UserError, match="repeats '1'"):
        utils.Charset('0121')


@pytest.mark.parametrize('label, steps', [('123', 3), ('112', 4), ('1111', 7), ('', 0), ('(3-7)*5', 7)])
def test_ctc_needs_a_blank_between_repeats(label, steps):
    assert utils.ctc_steps_needed(label) == steps


def test_accuracy_and_cer():
    accuracy, cer = utils.accuracy_and_cer(['123', '45', ''], ['123', '456', '78'])
    assert accuracy == pytest.approx(1 / 3)
    assert cer == pytest.approx((0 + 1 + 2) / 8)
    assert utils.edit_distance('kitten', 'sitting') == 3


def test_labelled_folder_lists_every_problem_with_its_file(tmp_path):
    folder = str(tmp_path)
    write_text_images(folder, ['12', '3a', '11111111', '45'], names=['0_12.png', '1_3a.png', '2_11111111.png',
                                                                     'nolabel.png'])
    with pytest.raises(utils.UserError) as error:
        utils.list_labelled_images(folder, 'train_dir', CHARSET, time_steps=12)
    message = str(error.value)
    assert '--train_dir=%s: 3 of 4 images' % folder in message
    assert "1_3a.png: label '3a' has 'a'" in message
    assert '2_11111111.png' in message and 'needs 15 time steps, the model has 12' in message
    assert '--max_stepsize' in message
    assert 'nolabel.png: no label' in message


def test_labelled_folder_in_natural_order_and_other_files_ignored(tmp_path, caplog):
    folder = str(tmp_path)
    write_text_images(folder, ['5', '6', '7'], names=['10_5.png', '2_6.jpg', '1_7.bmp'])
    (tmp_path / 'labels.txt').write_text('x')
    paths, labels = utils.list_labelled_images(folder, 'val_dir', CHARSET, time_steps=12)
    assert [os.path.basename(p) for p in paths] == ['1_7.bmp', '2_6.jpg', '10_5.png']
    assert labels == ['7', '6', '5']
    assert 'labels.txt' in caplog.text


def test_missing_and_empty_folders_are_named(tmp_path):
    with pytest.raises(utils.UserError, match='--val_dir=%s: no such folder' % (tmp_path / 'nope')):
        utils.list_images(str(tmp_path / 'nope'), 'val_dir')
    with pytest.raises(utils.UserError, match='holds no images'):
        utils.list_images(str(tmp_path), 'infer_dir')


def test_read_image_resizes_any_size_to_grey_or_colour(tmp_path):
    path = write_text_images(str(tmp_path), ['42'], size=(75, 310))[0]
    grey, ok = utils.read_image(path, 32, 96, 1)
    assert ok and grey.shape == (32, 96, 1) and grey.dtype == np.uint8
    assert grey.min() < 100 < grey.max()  # the text survived the resize
    colour, ok = utils.read_image(path, 60, 180, 3)
    assert ok and colour.shape == (60, 180, 3)


@pytest.mark.parametrize('ink, expected_paper', [(0, 255), (255, 0)])
def test_transparent_background_goes_behind_the_text_in_contrast(tmp_path, ink, expected_paper):
    image = np.zeros((20, 40, 4), np.uint8)  # transparent black everywhere, as many renderers leave it
    image[5:15, 10:30] = (ink, ink, ink, 255)
    cv2.imwrite(str(tmp_path / 'text.png'), image)
    grey, ok = utils.read_image(str(tmp_path / 'text.png'), 20, 40, 1)
    assert ok and grey[0, 0, 0] == expected_paper and grey[10, 20, 0] == ink
    colour, _ = utils.read_image(str(tmp_path / 'text.png'), 20, 40, 3)
    assert colour.shape == (20, 40, 3) and tuple(colour[0, 0]) == (expected_paper,) * 3


def test_sixteen_bit_images_are_read_as_eight_bit(tmp_path):
    image = np.full((20, 40), 65535, np.uint16)
    image[5:15, 10:30] = 0
    cv2.imwrite(str(tmp_path / 'deep.png'), image)
    grey, ok = utils.read_image(str(tmp_path / 'deep.png'), 20, 40, 1)
    assert ok and grey.dtype == np.uint8 and grey[0, 0, 0] == 255 and grey[10, 20, 0] == 0


def test_read_image_of_corrupt_file_warns_with_its_name(tmp_path, caplog):
    path = tmp_path / '1_23.png'
    path.write_bytes(b'not a png at all')
    image, ok = utils.read_image(str(path), 32, 96, 1)
    assert not ok and image.shape == (32, 96, 1)
    assert str(path) in caplog.text
















@pytest.mark.parametrize('text, value', [
    ('2+3*4', 14), ('(2+3)*4', 20), ('9-3-2', 4), ('5-(6+2)', -3), ('(3-7)*5', -20), ('0*9-9', -9), ('7', 7),
    ('05+3', 8), ('007', 7),
])
def test_expression_value_of_arithmetic(text, value):
    assert utils.expression_value(text) == value


@pytest.mark.parametrize('text', ['', '2**3', '3/1', '1+', '()', '__import__("os")', 'abc', '2 + 3', '1e3', '--3',
                                  '-3', '(1,2)', '1_0', None])
def test_expression_value_refuses_anything_else(text):
    assert utils.expression_value(text) is None


def test_read_image_takes_16_bit_alpha_and_palette_inputs_and_keeps_their_text(tmp_path):
    text = np.full((40, 120), 255, np.uint8)
    cv2.putText(text, '42', (20, 32), cv2.FONT_HERSHEY_SIMPLEX, 1.0, 0, 3)
    ink = text < 128
    cv2.imwrite(str(tmp_path / 'deep.png'), text.astype(np.uint16) * 257)
    rgba = np.zeros((40, 120, 4), np.uint8)
    rgba[..., 3] = np.where(ink, 255, 0)  # black text on a transparent background
    cv2.imwrite(str(tmp_path / 'alpha.png'), rgba)
    palette = Image.fromarray(np.stack([text, text // 2, text], axis=2)).convert('P', palette=Image.ADAPTIVE, colors=4)
    palette.save(str(tmp_path / 'palette.png'))
    cv2.imwrite(str(tmp_path / 'grey.jpg'), text)
    for name in ('deep.png', 'alpha.png', 'palette.png', 'grey.jpg'):
        for channels in (1, 3):
            image, ok = utils.read_image(str(tmp_path / name), 40, 120, channels)
            assert ok and image.shape == (40, 120, channels) and image.dtype == np.uint8, (name, channels)
            grey = image.mean(axis=2)
            assert grey[ink].mean() < 80 and grey[~ink].mean() > 170, (name, channels)  # dark text on light




class FakeClock:
    """Seconds that a test sets, for utils.Progress and utils.TrainingClock."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def feed(progress, clock, updates):
    """Calls progress.update(done) at each (seconds, done)."""
    for seconds, done in updates:
        clock.now = seconds
        progress.update(done)


@pytest.fixture
def ocr_log(monkeypatch, caplog):
    """caplog, given the records of utils.log from INFO up, also after setup_logging stopped them propagating."""
    monkeypatch.setattr(utils.log, 'propagate', True)
    caplog.set_level(logging.INFO, logger=utils.log.name)
    return caplog


def test_progress_logs_a_line_at_most_every_30_seconds_and_always_the_last(monkeypatch, ocr_log):
    monkeypatch.setattr(sys, 'stdout', io.StringIO())  # not a terminal
    clock = FakeClock()
    progress = utils.Progress(300000, 'synth', clock=clock)
    feed(progress, clock, [(10, 1000), (12345 / 215, 12345), (80, 20000), (90, 36000), (100, 300000)])
    progress.finish()
    assert [record.getMessage() for record in ocr_log.records] == [
        'synth: 12,345/300,000 images (4.1%), 215 images/s, 22 min left',
        'synth: 36,000/300,000 images (12.0%), 400 images/s, 11 min left',
        'synth: 300,000/300,000 images (100.0%), 3,000 images/s, took 2 min']
    assert sys.stdout.getvalue() == ''


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_rewrites_one_line_a_few_times_a_second_on_a_terminal(monkeypatch, ocr_log):
    monkeypatch.setattr(sys, 'stdout', FakeTerminal())
    clock = FakeClock()
    progress = utils.Progress(60000, 'val', clock=clock)
    feed(progress, clock, [(0.1, 100), (0.3, 30000), (0.4, 30000), (1, 30001)])
    progress.finish()
    first = 'val: 30,000/60,000 images (50.0%), 100,000 images/s, 0 s left'
    shorter = ['val: 30,001/60,000 images (50.0%), 30,001 images/s, 1 s left',
               'val: 30,001/60,000 images (50.0%), 30,001 images/s, took 1 s']
    assert sys.stdout.getvalue() == ''.join('\r' + line.ljust(len(first)) for line in [first] + shorter) + '\n'
    assert not ocr_log.records


# --- output files: what --infer_output may name --------------------------------

def test_output_file_replaces_a_plain_file_atomically_keeping_its_mode_or_the_umask(tmp_path):
    existing = tmp_path / 'old.txt'
    existing.write_text('old')
    os.chmod(existing, 0o640)
    utils.OutputFile(str(existing), 'infer_output').write('new\n')
    assert existing.read_text() == 'new\n' and existing.stat().st_mode & 0o777 == 0o640
    mask = os.umask(0o027)
    try:
        utils.OutputFile(str(tmp_path / 'fresh.txt'), 'infer_output').write('x\n')
    finally:
        os.umask(mask)
    assert (tmp_path / 'fresh.txt').stat().st_mode & 0o777 == 0o640
    assert sorted(os.listdir(tmp_path)) == ['fresh.txt', 'old.txt']  # no temporary file left


def test_output_file_writes_a_links_target_and_keeps_the_link(tmp_path):
    target, link = tmp_path / 'target.txt', tmp_path / 'link.txt'
    target.write_text('old')
    link.symlink_to(target)
    dangling = tmp_path / 'dangling.txt'
    dangling.symlink_to(tmp_path / 'new.txt')
    utils.OutputFile(str(link), 'infer_output').write('lines\n')
    utils.OutputFile(str(dangling), 'infer_output').write('more\n')
    assert link.is_symlink() and target.read_text() == 'lines\n'
    assert dangling.is_symlink() and (tmp_path / 'new.txt').read_text() == 'more\n'


def test_output_file_writes_through_a_fifo_with_a_reader_and_refuses_one_without(tmp_path):
    fifo = tmp_path / 'results.fifo'
    os.mkfifo(fifo)
    with pytest.raises(utils.UserError, match='results.fifo.*no process reads this FIFO'):
        utils.OutputFile(str(fifo), 'infer_output')
    link = tmp_path / 'stdout'  # as /dev/stdout leads to a pipe
    link.symlink_to(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        output = utils.OutputFile(str(link), 'infer_output')
        output.write('read through\n')
        assert os.read(reader, 100) == b'read through\n'
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and link.is_symlink()


def make_character_device(path, major, minor):
    """A character device node of our own (root only; some containers refuse it even to root)."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
    except (PermissionError, OSError) as error:
        pytest.skip('cannot make a device node here: %s' % error)


def test_output_file_writes_through_a_device_and_never_replaces_it(tmp_path, capsys):
    null, full = tmp_path / 'null', tmp_path / 'full'
    make_character_device(null, 1, 3)
    make_character_device(full, 1, 7)
    utils.OutputFile(str(null), 'infer_output').write('gone\n')
    with pytest.raises(utils.UserError, match='--infer_output=%s could not be written.*printed above' % full):
        utils.OutputFile(str(full), 'infer_output').write('kept\n')
    assert capsys.readouterr().out == 'kept\n'  # the readings are not lost
    assert stat.S_ISCHR(os.stat(null).st_mode) and stat.S_ISCHR(os.stat(full).st_mode)


@pytest.mark.parametrize('name, message', [
    ('', '--infer_output is empty'), ('folder', 'is a folder'), ('missing/r.txt', 'no such folder'),
    ('socket', 'neither a file, a character device nor a FIFO')])
def test_output_file_refuses_what_it_cannot_write_before_any_work(tmp_path, name, message):
    (tmp_path / 'folder').mkdir()
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / 'socket'))
        with pytest.raises(utils.UserError, match=message):
            utils.OutputFile(str(tmp_path / name) if name else '', 'infer_output')


# --- sizes and saved architectures ---------------------------------------------

@pytest.mark.parametrize('flag, value', [('batch_size', 10 ** 8), ('num_hidden', 100000), ('num_epochs', 10 ** 20),
                                         ('beam_width', 10 ** 9), ('image_width', 10 ** 7),
                                         ('num_images', 2 * 10 ** 9), ('seed', 2 ** 40)])
def test_every_size_has_a_bound_named_by_its_flag(flags, flag, value):
    with pytest.raises(utils.flags.IllegalFlagValueError,
                       match='flag --%s=%d: %d is not an integer in the range \\[\\d+, \\d+\\]' % (flag, value, value)):
        flags('--%s=%d' % (flag, value))


def test_the_memory_a_process_can_take_is_its_cgroups_limit_less_its_use_or_the_machines(tmp_path, monkeypatch):
    for name, text in (('v2.max', '2000000000\n'), ('v2.current', '500000000\n'), ('v1.limit', 'max\n'),
                       ('v1.usage', '0\n')):
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(utils, 'CGROUP_MEMORY', ())
    machine = utils.memory_available()
    assert machine[1] == 'its available memory' and 0 < machine[0] < 2 ** 50
    monkeypatch.setattr(utils, 'CGROUP_MEMORY', ((str(tmp_path / 'v2.max'), str(tmp_path / 'v2.current')),
                                                 (str(tmp_path / 'v1.limit'), str(tmp_path / 'v1.usage'))))
    limited = utils.memory_available()  # the machine's where it has less than 1.5 GB available
    assert limited == (1500000000, 'its memory limit (cgroup)') or limited[0] < 1500000000


@pytest.mark.parametrize('field, value, message', [
    ('num_hidden', 'x', 'num_hidden="x": must be a whole number'), ('bidirectional', 1, 'must be true or false'),
    ('charset', 5, 'must be a string'), ('num_hidden', 10 ** 6, 'in the range \\[1, 4096\\]'),
    ('rnn_cell', 'x', 'one of'),
    ('image_channel', 2, 'must be 1 \\(grey\\) or 3')])
def test_a_wrongly_typed_saved_architecture_is_named_by_file_and_field(field, value, message):
    arch = utils.Architecture(**{name: utils.FLAGS[name].default for name in utils.Architecture._fields})
    with pytest.raises(utils.UserError, match='/m/architecture.json: %s' % message if '=' in message else message):
        utils.check_architecture(arch._replace(**{field: value}), '/m/architecture.json')


@pytest.mark.parametrize('data', [png_claiming(40000, 40000), hdr_of(9000, 9000)], ids=['png', 'hdr'])
def test_an_image_over_the_pixel_bound_is_unreadable_whatever_its_format_or_name(tmp_path, caplog, data):
    path = tmp_path / 'bomb.png'
    path.write_bytes(data)
    image, ok = utils.read_image(str(path), 32, 96, 1)
    assert not ok and image.shape == (32, 96, 1)
    assert 'bomb.png (over 16777216 pixels: larger images are not read)' in caplog.text


def test_an_hdr_bomb_is_refused_before_it_is_decoded(tmp_path):
    """Unbounded, OpenCV decodes this 5 MB file into 9000 x 9000 float pixels (about 1 GB)."""
    (tmp_path / 'bomb.png').write_bytes(hdr_of(9000, 9000))
    read = subprocess.run([sys.executable, '-c', 'import re, sys, utils\n'  # VmHWM: this process's peak, in kB
                           'ok = utils.read_image(sys.argv[1], 32, 96, 1)[1]\n'
                           'print(ok, int(re.search(r"VmHWM:\\s*(\\d+)", open("/proc/self/status").read())[1]) // 1024)',
                           str(tmp_path / 'bomb.png')], cwd=REPO, capture_output=True, text=True, check=True)
    ok, peak_mb = read.stdout.split()
    assert ok == 'False' and int(peak_mb) < 300




def test_a_cosine_schedule_ending_before_training_warns_with_both_flags(flags, caplog):
    flags('--decay_steps=100', '--max_steps=200')
    utils.warn_about_schedule()
    assert 'reaches a learning rate of 0 at step 100 (--decay_steps)' in caplog.text and '--max_steps=200' in caplog.text
    caplog.clear()
    flags('--max_steps=300')  # no --decay_steps: the cosine ends at --max_steps, no warning
    utils.warn_about_schedule()
    assert utils.decay_steps() == 300 and 'reaches a learning rate of 0' not in caplog.text


def test_the_default_warm_up_takes_at_most_a_tenth_of_training_and_a_longer_given_one_warns(flags, caplog):
    flags('--max_steps=500')
    assert utils.warmup_steps() == 50
    flags('--max_steps=0')
    assert utils.warmup_steps() == 200
    flags('--max_steps=4000')
    assert utils.warmup_steps() == 200
    utils.warn_about_schedule()
    assert 'never reaches' not in caplog.text
    flags('--max_steps=100', '--warmup_steps=300')
    assert utils.warmup_steps() == 300
    utils.warn_about_schedule()
    assert '--warmup_steps=300 is not shorter than --max_steps=100' in caplog.text


def test_a_time_budget_replaces_the_default_step_limit_but_not_a_given_one(flags, caplog):
    flags('--max_minutes=20')
    assert utils.step_limit() == 0 and utils.fitted_schedule() and utils.decay_steps() == 10000
    assert utils.warmup_steps() == 200  # the training caps it at a tenth of the fitted schedule
    flags('--max_minutes=20', '--max_steps=3000')
    assert utils.step_limit() == 3000 and utils.decay_steps() == 3000  # whichever comes first
    flags('--max_minutes=20', '--lr_schedule=exponential')
    assert not utils.fitted_schedule()
    flags()
    assert utils.step_limit() == 4000 and not utils.fitted_schedule()
    utils.warn_about_schedule()
    assert caplog.text == ''


@pytest.mark.parametrize('flag', ['--max_minutes=-1', '--patience=-2', '--max_minutes=nan'])
def test_a_negative_budget_or_patience_is_refused_by_name(flags, flag):
    with pytest.raises(utils.flags.IllegalFlagValueError, match=flag.split('=')[0][2:]):
        flags(flag)


def test_the_clock_fits_the_steps_to_the_budget_counting_validations_and_the_final_save():
    clock = FakeClock()
    training = utils.TrainingClock(600, 0, clock)  # 10 minutes, no step limit
    clock.now += 5  # the first step builds TensorFlow's kernels: not counted in the rate
    training.stepped(1)
    assert training.rate(10) is None and training.end_step(10) is None and training.text(1) == '5 s in, 10 min left'
    clock.now += 10  # 100 steps in 10 s
    assert training.rate(101) == 10 and training.end_step(101) == 101 + 10 * 585
    training.paused(30)  # a validation and a save took 30 s: kept for the final ones, and in the rate from now on
    clock.now += 40  # 100 more steps, the 30 s pause among them
    assert training.rate(201) == 4 and training.end_step(201) == 201 + 4 * (600 - 55 - 30)
    assert not training.over(201) and training.text(201) == '55 s in, 9 min left'
    clock.now = 570
    assert training.over(5000) and training.seconds_left(5000) == 0 and training.end_step(5000) == 5000


def test_the_clock_gives_the_recent_step_rate_of_this_process_without_its_pauses():
    clock = FakeClock()
    training = utils.TrainingClock(600, 0, clock)
    for step in (1, 3, 5, 7):  # a cluster's global step moves by two for each step of this worker
        clock.now += 0.5
        training.stepped(step)
    assert training.recent_rate() == 2  # 4 steps in 2 s
    clock.now += 1
    training.stepped(9)
    clock.now += 30  # a validation took 30 s: the rate starts again after it
    training.paused(30)
    clock.now += 0.5
    training.stepped(11)
    assert training.recent_rate() == 2 and training.recent_rate() == 0


def test_the_clock_counts_down_the_steps_left_when_they_end_the_training_first():
    clock = FakeClock()
    training = utils.TrainingClock(600, 1000, clock)
    training.stepped(1)
    clock.now += 10
    assert training.seconds_left(101) == pytest.approx(89.9) and training.end_step(101) == 1000  # 10 steps a second
    assert utils.TrainingClock(0, 0, clock).seconds_left(5) is None and not utils.TrainingClock(0, 0, clock).over(5)
    assert training.limits() == ['step 1000', '10 min have passed (--max_minutes)']
    assert utils.TrainingClock(0, 0, clock).limits() == []
