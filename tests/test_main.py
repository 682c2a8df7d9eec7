"""main.py end to end, run as a user runs it: train -> checkpoint -> val -> infer -> --restore, and bad input."""
import json
import os
import re
import signal
import subprocess
import shutil
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, SMALL_MODEL_FLAGS, folders, hdr_of, run_cli, train, write_text_images
import cnn_lstm_otc_ocr as ocr
import utils


def test_train_logs_validates_and_saves(trained):
    tmp_path, result = trained
    assert re.search(r'step 4 epoch [\d.]+ loss [\d.]+ lr [\d.]+ gradient norm [\d.]+ [\d.]+ images/s',
                     result.stdout)
    assert 'step 1 epoch' in result.stdout and 'step 3 epoch' not in result.stdout  # every 10 steps, first, last
    assert 'step 2: validation accuracy' in result.stdout and ' label ' in result.stdout
    saved = os.listdir(tmp_path / 'checkpoint')
    assert 'ocr-model-3.index' in saved and 'ocr-model-4.index' in saved
    events = [tf.compat.v1.Event.FromString(record) for name in os.listdir(tmp_path / 'log')
              for record in tf.compat.v1.io.tf_record_iterator(str(tmp_path / 'log' / name))]
    tags = {value.tag: value for event in events for value in event.summary.value}
    assert {'loss', 'rate', 'gradient_norm', 'val/accuracy', 'val/cer', 'val/readings'} <= set(tags)
    readings = cv2.imdecode(np.frombuffer(tags['val/readings'].image.encoded_image_string, np.uint8),
                            cv2.IMREAD_COLOR)
    assert readings.shape == (5 * (80 + 24), 240, 3)  # 5 validation images above their label and reading
    architecture = json.loads((tmp_path / 'checkpoint' / 'architecture.json').read_text())
    assert architecture['image_width'] == 96 and architecture['charset'] == '0123456789'


def test_val_prints_its_figures_last(trained):
    tmp_path, _ = trained
    result = run_cli('--mode=val', '--batch_size=5', *folders(tmp_path))  # no architecture flags repeated
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r'accuracy=[\d.]+ cer=[\d.]+ images=23', result.stdout.strip().splitlines()[-1])


def test_infer_writes_every_image_in_natural_order_with_a_partial_batch(trained):
    tmp_path, _ = trained
    (tmp_path / 'result.txt').write_text('stale line\n')
    result = run_cli('--mode=infer', '--batch_size=4', '--decoder=greedy', *folders(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / 'result.txt').read_text().splitlines()
    assert [line.split('\t')[0] for line in lines] == ['%d.png' % i for i in range(11)]
    assert all(re.fullmatch(r'\d+\.png\t[0-9]*\t-?\d*\t[01]\.\d{4}', line) for line in lines), lines
    assert 'infer: 11/11 images' in result.stdout


@pytest.mark.slow
def test_restore_continues_the_global_step(trained):
    tmp_path, _ = trained
    result = train(tmp_path, '--restore', '--max_steps=6', '--moving_average_decay=0')  # averages or not
    assert result.returncode == 0, result.stderr
    assert 'at step 4' in result.stdout and 'step 5 ' in result.stdout and 'step 1 ' not in result.stdout
    assert 'ocr-model-6.index' in os.listdir(tmp_path / 'checkpoint')


@pytest.mark.slow
def test_training_again_keeps_the_model_unless_told_to_overwrite_it(trained):
    tmp_path, _ = trained
    result = train(tmp_path)
    assert result.returncode == 2
    assert 'already holds a trained model' in result.stderr and '--overwrite' in result.stderr
    (tmp_path / 'checkpoint' / 'ocr-model-3.index').rename(tmp_path / 'checkpoint' / 'ocr-model-3000.index')
    result = train(tmp_path, '--overwrite', '--max_steps=2', '--validation_steps=1')
    assert result.returncode == 0, result.stderr
    assert 'step 1 epoch' in result.stdout and 'removed the model in' in result.stdout
    assert sorted(name for name in os.listdir(tmp_path / 'checkpoint') if name.endswith('.index')) == [
        'ocr-model-2.index']
    assert json.loads((tmp_path / 'checkpoint' / 'best' / 'best.json').read_text())['step'] <= 2


@pytest.mark.slow
def test_flag_contradicting_the_saved_model_is_refused(trained):
    tmp_path, _ = trained
    result = run_cli('--mode=infer', '--image_width=180', *folders(tmp_path))
    assert result.returncode == 2
    assert '--image_width=180 but the model' in result.stderr and 'image_width=96' in result.stderr


@pytest.mark.slow
def test_unreadable_images_are_warned_about_and_kept_empty_in_infer(trained):
    tmp_path, _ = trained
    (tmp_path / 'infer' / '5.png').write_bytes(b'garbage')
    (tmp_path / 'infer' / '6.png').write_bytes(hdr_of(9000, 9000))  # a Radiance HDR bomb under a PNG name
    result = run_cli('--mode=infer', *folders(tmp_path))
    assert result.returncode == 0, result.stderr
    assert '5.png' in result.stderr and '6.png (over 16777216 pixels' in result.stderr
    lines = (tmp_path / 'result.txt').read_text().splitlines()
    assert len(lines) == 11 and lines[5] == '5.png\t\t\t' and lines[6] == '6.png\t\t\t'


@pytest.mark.slow
def test_unreadable_training_and_validation_images_are_skipped_with_a_warning(dataset):
    (dataset / 'train' / '0_123.png').write_bytes(b'garbage')
    (dataset / 'val' / '1_45.png').write_bytes(hdr_of(9000, 9000))  # validation reads every image
    result = train(dataset, '--max_steps=1')
    assert result.returncode == 0, result.stderr
    assert 'cannot read image' in result.stderr and '0_123.png' in result.stderr
    assert '1_45.png (over 16777216 pixels' in result.stderr


@pytest.mark.slow
def test_label_outside_charset_is_refused_before_training(dataset):
    write_text_images(str(dataset / 'train'), ['12'], names=['99_1x2.png'])
    result = train(dataset)
    assert result.returncode == 2
    assert "99_1x2.png: label '1x2' has 'x'" in result.stderr
    assert not (dataset / 'checkpoint').exists()


@pytest.mark.slow
def test_label_too_long_names_the_file_and_the_fix(dataset):
    write_text_images(str(dataset / 'train'), ['1'], names=['99_1234567890123.png'])
    result = train(dataset)
    assert result.returncode == 2
    assert '99_1234567890123.png' in result.stderr and '--max_stepsize' in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['val', 'infer', 'export'])
def test_no_checkpoint_is_an_error_not_random_weights(dataset, mode):
    result = run_cli('--mode=%s' % mode, '--export_dir=%s' % (dataset / 'export'), *folders(dataset))
    assert result.returncode == 2
    assert 'no checkpoint in --checkpoint_dir=%s' % (dataset / 'checkpoint') in result.stderr
    assert not (dataset / 'result.txt').exists()


@pytest.mark.slow
def test_missing_and_empty_folders(dataset):
    result = train(dataset, '--train_dir=%s' % (dataset / 'nope'))
    assert result.returncode == 2 and '--train_dir=%s: no such folder' % (dataset / 'nope') in result.stderr
    os.makedirs(dataset / 'empty')
    result = train(dataset, '--val_dir=%s' % (dataset / 'empty'))
    assert result.returncode == 2 and '--val_dir=%s holds no images' % (dataset / 'empty') in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize('flag, message', [
    ('--num_gpus=64', '--num_gpus=64 but '),
    ('--max_stepsze=20', "error: Unknown command line flag 'max_stepsze'. Did you mean: max_steps, max_stepsize ?"),
    ('--batch_size=0', 'error: flag --batch_size=0: 0 is not an integer in the range [1, 16384]'),
    ('--image_channel=2', 'flag --image_channel=2: must be 1 (grey) or 3 (colour)'),
    ('--max_stepsize=500', 'flags max_stepsize=500, image_width=96: must be between 0 and --image_width'),
    ('--mode=rename', '--mode=rename: main.py runs train, val, infer or export'),
    ('--precision=fp8', 'flag --precision=fp8: value should be one of <fp32|bf16|fp16>'),
    ('--seed=x', 'flag --seed=x: invalid literal'),
    ('--lr_boundaries=abc', "flag --lr_boundaries=['abc']: must be increasing step numbers"),
    ('--decay_rate=-1', 'flag --decay_rate=-1: -1.0 is not a number in the range [0, 1]'),
    ('--decay_rate=0', 'flag --decay_rate=0.0: must be more than 0'),
    ('--leakiness=nan', 'flag --leakiness=nan: must be a finite number'),
    ('--initial_learning_rate=inf', 'flag --initial_learning_rate=inf: must be a finite number'),
    ('--clip_norm=-1', 'flag --clip_norm=-1: -1.0 is not a non-negative number'),
    ('--moving_average_decay=1', 'flag --moving_average_decay=1.0: must be less than 1 (0: off)'),
    ('--export_formats=tflite,pdf', "flag --export_formats=['tflite', 'pdf']: must be among saved_model,tflite,onnx"),
    ('--synth_height=60', 'error: --synth_height: not a flag of main.py'),
    ('--restore --overwrite', 'flags restore=True, overwrite=True: --restore continues the model in checkpoint_dir'),
])
def test_bad_flags_are_named(dataset, flag, message):
    result = train(dataset, *flag.split())
    assert result.returncode == 2
    assert message in result.stderr
    assert 'Traceback' not in result.stderr


@pytest.mark.slow
def test_best_model_survives_worse_validations_and_rolling_deletion(trained):
    tmp_path, _ = trained
    best_file = tmp_path / 'checkpoint' / 'best' / 'best.json'
    record = json.loads(best_file.read_text())
    assert set(record) == {'step', 'accuracy', 'cer'} and record['step'] in (2, 4)
    best_file.write_text(json.dumps(dict(record, accuracy=1.0)))  # no later validation can beat it
    result = train(tmp_path, '--restore', '--max_steps=12', '--save_steps=1')
    assert result.returncode == 0, result.stderr
    assert 'best so far accuracy 1.0000, CER %.4f at step %d' % (record['cer'], record['step']) in result.stdout
    rolling = sorted(n for n in os.listdir(tmp_path / 'checkpoint') if n.endswith('.index'))
    assert rolling == ['ocr-model-%d.index' % s for s in (10, 11, 12, 8, 9)]
    assert 'ocr-model-%d.index' % record['step'] in os.listdir(tmp_path / 'checkpoint' / 'best')

    result = run_cli('--mode=val', *folders(tmp_path))
    assert result.returncode == 0, result.stderr
    assert 'using the best validated model: step %d' % record['step'] in result.stdout
    result = run_cli('--mode=infer', '--checkpoint=latest', *folders(tmp_path))
    assert result.returncode == 0, result.stderr
    assert 'restored %s' % (tmp_path / 'checkpoint' / 'ocr-model-12') in result.stdout


@pytest.mark.slow
def test_explicit_best_without_a_validated_model_is_refused(trained):
    tmp_path, _ = trained
    for name in os.listdir(tmp_path / 'checkpoint' / 'best'):
        os.remove(tmp_path / 'checkpoint' / 'best' / name)
    result = run_cli('--mode=infer', '--checkpoint=best', *folders(tmp_path))
    assert result.returncode == 2 and '--checkpoint=best: no validated model' in result.stderr
    assert run_cli('--mode=infer', *folders(tmp_path)).returncode == 0  # falls back to the latest


@pytest.mark.slow
def test_non_finite_loss_stops_training_without_saving(dataset):
    result = train(dataset, '--optimizer=momentum', '--initial_learning_rate=1e30', '--max_steps=20',
                   '--save_steps=1000', '--validation_steps=1000')
    assert result.returncode == 2
    assert re.search(r'step \d+: the loss is (nan|inf)', result.stderr), result.stderr
    assert '.png' in result.stderr and 'Stopped without saving' in result.stderr
    assert not any(n.endswith('.index') for n in os.listdir(dataset / 'checkpoint'))


@pytest.mark.slow
def test_bf16_trains_and_fp16_on_the_cpu_is_refused(dataset):
    result = train(dataset, '--precision=bf16', '--max_steps=2')
    assert result.returncode == 0, result.stderr
    assert 'step 2 ' in result.stdout
    result = train(dataset, '--precision=fp16')
    assert result.returncode == 2 and '--precision=fp16 runs on GPUs' in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize('cell, bidirectional', [('gru', True), ('rhn', False)])  # every cell both ways, and
# unrolled: test_rnn_cells.py; the small model's LSTM: every other CLI test
def test_each_rnn_variant_trains_validates_and_infers_without_repeating_flags(dataset, cell, bidirectional):
    extra = ['--rnn_cell=%s' % cell, '--rnn_layers=2', '--rhn_depth=2', '--bidirectional=%s' % bidirectional]
    result = train(dataset, '--max_steps=1', *extra)
    assert result.returncode == 0, result.stderr
    architecture = json.loads((dataset / 'checkpoint' / 'architecture.json').read_text())
    assert (architecture['rnn_cell'], architecture['bidirectional'], architecture['rnn_layers']) == \
        (cell, bidirectional, 2)
    result = run_cli('--mode=infer', *folders(dataset))
    assert result.returncode == 0, result.stderr
    assert len((dataset / 'result.txt').read_text().splitlines()) == 11


@pytest.mark.slow
def test_restore_with_another_architecture_is_refused(trained):
    tmp_path, _ = trained
    result = train(tmp_path, '--restore', '--rnn_cell=gru', '--num_hidden=64')
    assert result.returncode == 2
    assert "--rnn_cell='gru' but the model" in result.stderr and "rnn_cell='lstm'" in result.stderr
    assert '--num_hidden=64 but the model' in result.stderr and 'num_hidden=32' in result.stderr


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_130(dataset):
    command = [sys.executable, os.path.join(REPO, 'main.py'), '--mode=train', '--batch_size=8',
               '--validation_steps=100000', '--save_steps=100000', *SMALL_MODEL_FLAGS, *folders(dataset)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                               env=dict(os.environ, PYTHONUNBUFFERED='1'))
    try:
        for line in process.stdout:
            if line.startswith('step 10 '):
                process.send_signal(signal.SIGINT)
                break
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert re.search(r'interrupted at step (\d+)', out)
    step = int(re.search(r'interrupted at step (\d+)', out).group(1))
    assert 'ocr-model-%d.index' % step in os.listdir(dataset / 'checkpoint')


def variables(directory):
    """{name: shape} of the checkpoint a model folder points at."""
    return dict(tf.train.list_variables(tf.train.latest_checkpoint(str(directory))))


@pytest.mark.slow
def test_export_keeps_the_inference_variables_and_reads_the_same_when_moved(trained):
    tmp_path, _ = trained
    record = json.loads((tmp_path / 'export' / 'model.json').read_text())
    assert record['step'] == 4 and 0 <= record['validation_accuracy'] <= 1
    trained_variables = variables(tmp_path / 'checkpoint' / 'best')
    optimiser = {name for name in trained_variables
                 if 'Adam' in name or name.endswith('_power') or name == 'global_step'}
    assert optimiser and variables(tmp_path / 'export') == {
        name: shape for name, shape in trained_variables.items() if name not in optimiser}
    shutil.copytree(tmp_path / 'export', tmp_path / 'moved')  # the folder holds no absolute path
    for source in ('checkpoint', 'moved'):
        result = run_cli('--mode=infer', '--checkpoint_dir=%s' % (tmp_path / source),
                         '--infer_output=%s' % (tmp_path / (source + '.txt')), *folders(tmp_path)[2:3])
        assert result.returncode == 0, result.stderr
    assert (tmp_path / 'checkpoint.txt').read_text() == (tmp_path / 'moved.txt').read_text()
    result = run_cli('--mode=export', '--checkpoint_dir=%s' % (tmp_path / 'moved'), '--export_formats=saved_model',
                     '--export_dir=%s' % (tmp_path / 'again'))  # an export of an export keeps its record
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / 'again' / 'model.json').read_text()) == record


@pytest.mark.slow
def test_export_needs_a_folder_and_keeps_an_exported_model(trained):
    tmp_path, _ = trained
    result = run_cli('--mode=export', *folders(tmp_path))
    assert result.returncode == 2 and '--mode=export needs --export_dir' in result.stderr
    (tmp_path / 'a_file').write_text('')
    result = run_cli('--mode=export', '--export_dir=%s' % (tmp_path / 'a_file'), *folders(tmp_path))
    assert result.returncode == 2 and 'a_file is a file, not a folder' in result.stderr
    export = ['--mode=export', '--export_dir=%s' % (tmp_path / 'export'), '--export_formats=saved_model',
              *folders(tmp_path)]
    result = run_cli(*export)
    assert result.returncode == 2 and 'already holds a model (--overwrite replaces it)' in result.stderr
    (tmp_path / 'export' / 'model.onnx').write_text('an earlier export')  # of another model: not left beside it
    assert run_cli(*export, '--overwrite').returncode == 0
    assert not (tmp_path / 'export' / 'model.onnx').exists() and (tmp_path / 'export' / 'saved_model.pb').exists()


@pytest.mark.slow
def test_init_from_an_export_starts_a_new_training_from_its_weights(trained):
    tmp_path, _ = trained
    write_text_images(str(tmp_path / 'train'), ['', ''], names=['100_.png', '101_.png'])  # no text: empty label
    result = run_cli('--mode=train', '--init_from=%s' % (tmp_path / 'export'), '--batch_size=16', '--max_steps=2',
                     '--validation_steps=2', '--initial_learning_rate=1e-9', '--augment',
                     *folders(tmp_path)[:2], '--checkpoint_dir=%s' % (tmp_path / 'tuned'),
                     '--log_dir=%s' % (tmp_path / 'log2'))
    assert result.returncode == 0, result.stderr
    assert 'initialised the model from' in result.stdout and 'step 1 epoch' in result.stdout
    tuned = tf.train.latest_checkpoint(str(tmp_path / 'tuned'))
    exported = tf.train.latest_checkpoint(str(tmp_path / 'export'))
    assert tf.train.load_variable(tuned, 'global_step') == 2
    for name in (name for name in variables(tmp_path / 'export') if 'moving_' not in name):  # weights, not statistics
        assert abs(tf.train.load_variable(tuned, name) - tf.train.load_variable(exported, name)).max() < 1e-3, name
    assert json.loads((tmp_path / 'tuned' / 'architecture.json').read_text()) == \
        json.loads((tmp_path / 'export' / 'architecture.json').read_text())


@pytest.mark.slow
def test_init_from_takes_the_best_model_or_with_checkpoint_latest_the_newest(trained):
    tmp_path, _ = trained
    checkpoint = tmp_path / 'checkpoint'
    for name in os.listdir(checkpoint / 'best'):
        if name.startswith('ocr-model-'):
            os.remove(checkpoint / 'best' / name)
    for name in os.listdir(checkpoint):                       # best: step 3; newest: the rolling step 4
        if name.startswith('ocr-model-3.'):
            shutil.copy(checkpoint / name, checkpoint / 'best' / name)
    (checkpoint / 'best' / 'best.json').write_text(json.dumps({'step': 3, 'accuracy': 0.5, 'cer': 0.5}))
    for which, expected in (('best', checkpoint / 'best' / 'ocr-model-3'), ('latest', checkpoint / 'ocr-model-4')):
        result = run_cli('--mode=train', '--init_from=%s' % checkpoint, '--checkpoint=%s' % which, '--max_steps=1',
                         '--batch_size=16', *folders(tmp_path)[:2], '--checkpoint_dir=%s' % (tmp_path / which),
                         '--log_dir=%s' % (tmp_path / 'log2'))
        assert result.returncode == 0, result.stderr
        assert 'initialised the model from %s (step 0' % expected in result.stdout, which


@pytest.mark.slow
def test_init_from_trains_the_weights_at_another_input_size_that_keeps_the_feature_height(trained):
    tmp_path, _ = trained
    start = ['--mode=train', '--init_from=%s' % (tmp_path / 'export'), '--batch_size=16', '--max_steps=1',
             *folders(tmp_path)[:2], '--checkpoint_dir=%s' % (tmp_path / 'wider'), '--log_dir=%s' % (tmp_path / 'log2')]
    result = run_cli(*start, '--image_height=48')           # conv features 6 high, where the model's were 4
    assert result.returncode == 2 and '--image_height=48 gives conv features 6 high' in result.stderr
    assert 'choose a height from 25 to 32' in result.stderr  # 3 units halving 32 pixels to 4
    assert 'Traceback' not in result.stderr and not (tmp_path / 'wider').exists()
    result = run_cli(*start, '--image_height=28', '--image_width=128')
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / 'export' / 'architecture.json').read_text())
    wider = json.loads((tmp_path / 'wider' / 'architecture.json').read_text())
    assert wider == dict(saved, image_height=28, image_width=128)
    result = run_cli('--mode=infer', '--checkpoint_dir=%s' % (tmp_path / 'wider'), *folders(tmp_path)[2:3],
                     '--infer_output=%s' % (tmp_path / 'wider.txt'))
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / 'wider.txt').read_text().splitlines()) == len(os.listdir(tmp_path / 'infer'))


@pytest.mark.slow
def test_init_from_another_architecture_or_restore_from_an_export_is_refused(trained):
    tmp_path, _ = trained
    start = ['--mode=train', '--max_steps=1', *folders(tmp_path)[:2], '--log_dir=%s' % (tmp_path / 'log2')]
    result = run_cli(*start, '--init_from=%s' % (tmp_path / 'export'), '--num_hidden=16',
                     '--checkpoint_dir=%s' % (tmp_path / 'new'))
    assert result.returncode == 2 and 'num_hidden' in result.stderr and 'Traceback' not in result.stderr
    result = run_cli(*start, '--restore', '--checkpoint_dir=%s' % (tmp_path / 'export'))
    assert result.returncode == 2 and 'holds an exported model (no step or optimiser state)' in result.stderr
    assert '--init_from=%s' % (tmp_path / 'export') in result.stderr and 'Traceback' not in result.stderr
    result = run_cli(*start, '--init_from=%s' % (tmp_path / 'nowhere'), '--checkpoint_dir=%s' % (tmp_path / 'new'))
    assert result.returncode == 2 and 'nowhere: no such folder' in result.stderr


@pytest.mark.slow
def test_learning_rate_schedule_flags_reach_the_training(dataset):
    result = run_cli('--mode=train', '--batch_size=16', '--max_steps=4', '--validation_steps=10', *SMALL_MODEL_FLAGS,
                     *folders(dataset), '--initial_learning_rate=0.001', '--lr_schedule=piecewise', '--lr_boundaries=2',
                     '--decay_rate=0.5', '--warmup_steps=0')
    assert result.returncode == 0, result.stderr
    assert re.search(r'step 1 epoch [\d.]+ loss [\d.]+ lr 0\.001000 ', result.stdout)
    assert re.search(r'step 4 epoch [\d.]+ loss [\d.]+ lr 0\.000500 ', result.stdout)


@pytest.mark.slow
@pytest.mark.parametrize('extra, architecture, steps, rates', [
    ([], (40, 120, 16, 'gru', True), 30, ('0.001000', '0.000146')),  # no warm-up in 4 steps; cosine at 0 and 3/4
    (list(utils.ORIGINAL_FLAGS), (60, 180, 0, 'lstm', False), 12, ('0.001000', '0.001000')),
])
def test_defaults_and_readmes_flag_set_of_the_original_project(dataset, extra, architecture, steps, rates):
    assert ' '.join(utils.ORIGINAL_FLAGS) in open(os.path.join(REPO, 'README.md')).read()
    result = run_cli('--mode=train', *extra, '--batch_size=16', '--max_steps=4', *folders(dataset))
    assert result.returncode == 0, result.stderr
    saved = json.loads((dataset / 'checkpoint' / 'architecture.json').read_text())
    assert tuple(saved[name] for name in ('image_height', 'image_width', 'max_stepsize', 'rnn_cell',
                                          'bidirectional')) == architecture
    assert ocr.time_steps(utils.Architecture(**saved)) == steps
    for step, rate in zip((1, 4), rates):
        assert re.search(r'step %d epoch [\d.]+ loss [\d.]+ lr %s ' % (step, rate), result.stdout), result.stdout


@pytest.mark.slow
def test_colour_model_trains_and_reads_without_repeating_flags(dataset):
    result = run_cli('--mode=train', '--batch_size=16', '--max_steps=2', '--validation_steps=2', '--image_channel=3',
                     *SMALL_MODEL_FLAGS, *folders(dataset))
    assert result.returncode == 0, result.stderr
    assert json.loads((dataset / 'checkpoint' / 'architecture.json').read_text())['image_channel'] == 3
    result = run_cli('--mode=infer', *folders(dataset))
    assert result.returncode == 0, result.stderr
    assert len((dataset / 'result.txt').read_text().splitlines()) == 11


@pytest.mark.slow
def test_an_exported_trained_model_reads_the_same_when_moved(tmp_path):
    result = run_cli('--mode=export', '--checkpoint_dir=%s' % os.path.join(REPO, 'imgs', 'model'),
                     '--export_dir=%s' % (tmp_path / 'export'), '--export_formats=saved_model')
    assert result.returncode == 0, result.stderr
    shutil.move(str(tmp_path / 'export'), str(tmp_path / 'moved'))
    readings = []
    for model in (os.path.join(REPO, 'imgs', 'model'), str(tmp_path / 'moved')):
        output = tmp_path / ('%d.txt' % len(readings))
        result = run_cli('--mode=infer', '--checkpoint_dir=%s' % model, '--infer_output=%s' % output)
        assert result.returncode == 0, result.stderr
        readings.append(output.read_text())
    assert readings[0] == readings[1]
    assert sum(1 for line in readings[0].splitlines() if line.split('\t')[1]) >= 95  # a trained model reads


@pytest.mark.slow
def test_help_names_every_mode_and_the_flags_and_exits_0():
    result = run_cli('--help')
    assert result.returncode == 0 and result.stderr == ''
    assert all('--mode=%s' % mode in result.stdout for mode in ('train', 'val', 'infer', 'export'))
    assert '--batch_size: images per step' in result.stdout
    assert '--synth_height' not in result.stdout and '--num_images' not in result.stdout  # helper.py's


def test_a_damaged_model_json_of_an_export_is_named_before_anything_is_written(tmp_path):
    shutil.copytree(os.path.join(REPO, 'imgs', 'model'), tmp_path / 'model')
    (tmp_path / 'model' / 'model.json').write_text('{"step": 50')
    result = run_cli('--mode=export', '--checkpoint_dir=%s' % (tmp_path / 'model'),
                     '--export_dir=%s' % (tmp_path / 'export'))
    assert result.returncode == 2 and 'model.json is damaged: not a JSON record' in result.stderr, result.stderr
    assert not (tmp_path / 'export').exists()


def test_a_failed_export_leaves_no_temporary_folder(tmp_path, flags, monkeypatch):
    import main
    flags('--export_dir=%s' % tmp_path, '--export_formats=saved_model')
    folder = utils.ModelFolder(os.path.join(REPO, 'imgs', 'model'))
    model = main.Model(folder, folder.architecture(), folder.newest_rolling(), None, 'from its architecture.json')

    def converter_fails(*arguments):
        os.makedirs(arguments[2])
        raise ValueError('conversion failed')
    monkeypatch.setattr(ocr, 'write_serving_model', converter_fails)
    with pytest.raises(ValueError, match='conversion failed'):
        main.write_formats(model, ['saved_model'])
    assert os.listdir(tmp_path) == []


def test_a_cluster_task_that_is_gone_ends_the_task_at_once_with_code_1(caplog):
    import main
    task = utils.ClusterTask({'ps': ['a:1'], 'worker': ['b:2']}, 'worker', 0, 'test')
    error = tf.errors.UnavailableError(None, None, 'Socket closed\nmore')
    assert main.explain_op_error(error, task) == (1, True)
    assert 'a task of the cluster is gone (Socket closed)' in caplog.text
    with pytest.raises(tf.errors.UnavailableError):
        main.explain_op_error(error, None)  # not a cluster's: raised as it is


@pytest.mark.slow
def test_a_time_budget_ends_training_on_time_with_the_schedule_at_its_end(dataset):
    result = train(dataset, '--max_minutes=0.15', '--max_steps=0', '--validation_steps=50', '--save_steps=50')
    assert result.returncode == 0, result.stderr
    assert 'until 9 s have passed (--max_minutes)' in result.stdout
    assert re.search(r'at [\d.]+ steps/s the cosine schedule ends at about step \d+', result.stdout)
    steps = re.findall(r'^step (\d+) epoch .* lr ([\d.]+) .* (\d+) s in, (\d+) s left$', result.stdout, re.M)
    step, rate, elapsed, left = steps[-1]
    assert int(elapsed) <= 9 and float(rate) < 0.5 * 0.001  # on time, the cosine past its middle
    saved = re.findall(r'^step (\d+): saved checkpoint', result.stdout, re.M)[-1]
    assert int(saved) >= int(step) and 'ocr-model-%s.index' % saved in os.listdir(dataset / 'checkpoint')


@pytest.mark.slow
def test_patience_stops_after_validations_without_a_better_one(dataset):
    result = train(dataset, '--max_steps=100', '--validation_steps=2', '--initial_learning_rate=1e-12',
                   '--patience=2')  # the same readings at every validation: none is better than the first
    assert result.returncode == 0, result.stderr
    assert 'no better validation in the last 2 (--patience=2): stopping' in result.stdout
    assert 'ocr-model-6.index' in os.listdir(dataset / 'checkpoint') and 'best so far' in result.stdout
