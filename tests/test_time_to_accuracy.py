"""tests/time_to_accuracy.py's arithmetic and its command line (the timed runs themselves are the script's job)."""
import os
import re

import numpy as np
import pytest

import other_renderers
import time_to_accuracy
from conftest import REPO


def test_summary_finds_each_threshold_the_lowest_after_99_and_the_best():
    validations = [(1.0, 250, 0.0), (2.5, 500, 0.991), (3.0, 750, 0.95), (4.2, 1000, 0.998), (5.0, 1250, 0.997)]
    assert time_to_accuracy.summary(validations, 0.9965) == [
        '2.5 min (step 500)', '4.2 min (step 1000)', '95.00%', '99.80%', '99.65%']


def test_summary_of_a_run_that_never_reaches_99():
    assert time_to_accuracy.summary([(1.0, 250, 0.5), (2.0, 500, 0.9)], 0.88) == [
        'not reached', 'not reached', '-', '90.00%', '88.00%']


def test_recipes_are_chosen_by_name_and_added_by_flags(tmp_path):
    (tmp_path / 'Sans.ttf').write_bytes(b'')  # the rotated renderer's fonts are only listed here, not opened
    args = time_to_accuracy.parse_args(['--recipes=original', '--flags', 'fast=--batch_size=32 --augment',
                                        '--fonts=%s/*.ttf' % tmp_path])
    assert args.recipes == {'original': time_to_accuracy.RECIPES['original'],
                            'fast': ['--batch_size=32', '--augment']}
    assert args.renderers == ['rotated', 'contest'] and args.fonts == [str(tmp_path / 'Sans.ttf')]
    assert '--initial_learning_rate=0.001' in args.recipes['original']


def test_the_readme_recipe_is_the_own_data_command_of_readme():
    with open(os.path.join(REPO, 'README.md')) as readme:
        command = re.search(r'python main.py --mode=train --train_dir=T (.*)', readme.read()).group(1).split()
    given_by_the_script = ['--val_dir=V', '--charset=C', '--checkpoint_dir=checkpoint/mine', '--max_minutes=20']
    assert [flag for flag in command if flag not in given_by_the_script] == time_to_accuracy.RECIPES['readme']


@pytest.mark.parametrize('flag, named', [('--recipes=readme,fastest', '--recipes: unknown fastest'),
                                          ('--renderers=rotated,cursive', '--renderers: unknown cursive'),
                                          ('--flags=--augment', '--flags=--augment: give a name'),
                                          ('--fonts=/no/such/folder/*.ttf', '--fonts=/no/such/folder/*.ttf: no font')])
def test_a_bad_recipe_renderer_or_font_is_named_before_anything_is_drawn(flag, named, capsys):
    with pytest.raises(SystemExit):
        time_to_accuracy.parse_args([flag])
    assert named in capsys.readouterr().err


def test_plates_are_labelled_in_their_formats_and_trained_with_their_charset():
    rng = np.random.default_rng(0)
    labels = [other_renderers.plate_label(rng) for _ in range(300)]
    shapes = {re.sub('[0-9]', 'N', re.sub('[A-Z]', 'L', label)) for label in labels}
    assert shapes == set(other_renderers.PLATE_FORMATS)
    assert set(''.join(labels)) <= set(time_to_accuracy.CHARSETS['plates']) and not set('IOQ') & set(''.join(labels))


def test_meter_readings_are_4_to_7_digits_with_at_most_one_inner_point_and_trained_with_their_charset():
    rng = np.random.default_rng(0)
    labels = [other_renderers.meter_label(rng) for _ in range(300)]
    assert all(re.fullmatch(r'[0-9]+(\.[0-9]+)?', label) and 4 <= len(label.replace('.', '')) <= 7
               for label in labels)
    assert 0.3 < np.mean(['.' in label for label in labels]) < 0.7
    assert set(''.join(labels)) <= set(time_to_accuracy.CHARSETS['meter'])


def test_a_meter_image_shows_its_reading_darker_or_brighter_than_the_display():
    image = np.asarray(other_renderers.draw_meter('8888', np.random.default_rng(1)).convert('L'), np.float32)
    blank = np.asarray(other_renderers.draw_meter('1111', np.random.default_rng(1)).convert('L'), np.float32)
    assert 150 <= image.shape[1] <= 250 and 45 <= image.shape[0] <= 75
    assert np.abs(image - blank).mean() > 5  # the same display and light: only the lit segments differ
