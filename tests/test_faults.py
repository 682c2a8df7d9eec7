"""Bad inputs and faults, tried as a hostile but realistic user would: every one ends in a clear message or is
worked around with a warning, and nothing is lost. Last, trainings killed with SIGKILL at chosen moments."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

import main
import utils
from conftest import REPO, SMALL_MODEL_FLAGS, USER_ENVIRONMENT, folders, run_cli, train, wait_for, write_text_images

ROOT = os.geteuid() == 0  # permissions do not stop root: those cases are tried by other users only


def start_training(tmp_path, *extra):
    """A training running in the background, as a user starts one."""
    return subprocess.Popen([sys.executable, os.path.join(REPO, 'main.py'), '--mode=train', '--batch_size=8',
                             '--validation_steps=3', '--save_steps=2', *SMALL_MODEL_FLAGS, *folders(tmp_path), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_second_training_into_a_busy_folder_is_refused_and_a_killed_ones_folder_is_free(dataset):
    first = start_training(dataset, '--max_steps=100000')
    lock = dataset / 'checkpoint' / 'training.lock'
    wait_for(lambda: lock.exists() or first.poll() is not None)
    second = train(dataset, '--rnn_cell=gru')
    assert second.returncode == 2 and 'is in use by another training (process %d on ' % first.pid in second.stderr
    wait_for(lambda: (dataset / 'checkpoint' / 'checkpoint').exists())
    first.send_signal(signal.SIGKILL)
    first.wait()
    third = train(dataset, '--restore', '--max_steps=6')
    assert third.returncode == 0, third.stderr
    assert 'in use' not in third.stderr and 'process %d on ' % first.pid not in lock.read_text()


@pytest.mark.slow
def test_damaged_record_files_are_reported_and_worked_around(trained):
    tmp_path, _ = trained
    (tmp_path / 'checkpoint' / 'best' / 'best.json').write_text('')  # what kill -9 mid-write used to leave
    for mode in ('val', 'infer', 'export'):
        result = run_cli('--mode=%s' % mode, '--export_dir=%s' % (tmp_path / 'exported'), *folders(tmp_path))
        assert result.returncode == 0, result.stderr
        assert 'best.json is missing or damaged' in result.stderr and 'Traceback' not in result.stderr
    (tmp_path / 'checkpoint' / 'architecture.json').write_text('{"image_height": ')
    result = run_cli('--mode=val', *folders(tmp_path))
    assert result.returncode == 2 and 'architecture.json is damaged: not a JSON record' in result.stderr


@pytest.mark.slow
def test_leftovers_of_a_killed_training_are_removed_at_the_next_start(trained):
    tmp_path, _ = trained
    checkpoint = tmp_path / 'checkpoint'
    leftovers = ['ocr-model-9.data-00000-of-00001', 'ocr-model-4.data-00000-of-00001.tempstate123',
                 'ocr-model-5.meta.tmp0a1b', '.best.json.x1y2.tmp']
    for name in leftovers:
        (checkpoint / name).write_bytes(b'')
    result = train(tmp_path, '--restore', '--max_steps=5')
    assert result.returncode == 0, result.stderr
    assert 'removed what an interrupted training left' in result.stderr
    assert not any((checkpoint / name).exists() for name in leftovers)
    assert (checkpoint / 'ocr-model-4.data-00000-of-00001').exists()  # complete checkpoints stay


@pytest.mark.slow
def test_infer_output_is_checked_before_any_image_is_read(trained):
    tmp_path, _ = trained
    image = str(tmp_path / 'infer' / '3.png')
    before = open(image, 'rb').read()
    for output, message in ((tmp_path, 'is a folder'), (tmp_path / 'nowhere' / 'r.txt', 'no such folder'),
                            (image, 'is one of the images of --infer_dir')):
        result = run_cli('--mode=infer', *folders(tmp_path)[:-2], '--checkpoint_dir=%s' % (tmp_path / 'checkpoint'),
                         '--infer_output=%s' % output)
        assert result.returncode == 2 and message in result.stderr and 'infer: ' not in result.stdout
    assert open(image, 'rb').read() == before


@pytest.mark.slow
@pytest.mark.skipif(ROOT, reason='root may write anywhere')
def test_read_only_output_and_model_folders_are_refused_at_start(trained):
    tmp_path, _ = trained
    (tmp_path / 'locked').mkdir()
    os.chmod(tmp_path / 'locked', 0o500)
    result = run_cli('--mode=infer', *folders(tmp_path), '--infer_output=%s' % (tmp_path / 'locked' / 'r.txt'))
    assert result.returncode == 2 and 'cannot be written' in result.stderr
    result = train(tmp_path, '--checkpoint_dir=%s' % (tmp_path / 'locked'))
    assert result.returncode == 2 and 'cannot be written' in result.stderr


@pytest.mark.slow
def test_a_model_folder_that_is_a_file_is_refused_at_start(dataset):
    (dataset / 'a_file').write_text('')
    result = train(dataset, '--checkpoint_dir=%s' % (dataset / 'a_file' / 'model'))
    assert result.returncode == 2 and 'is a file, not a folder' in result.stderr and 'Traceback' not in result.stderr
    result = run_cli('--mode=infer', '--infer_dir=%s' % (dataset / 'a_file'), '--checkpoint_dir=imgs/model')
    assert result.returncode == 2 and 'a_file is a file, not a folder' in result.stderr


@pytest.mark.slow
def test_names_with_tabs_newlines_and_bytes_that_are_not_utf8_give_one_line_each(trained):
    tmp_path, _ = trained
    odd = tmp_path / 'odd'
    write_text_images(str(odd), ['12', '34', '56', '78'], names=['tab\there.png', 'new\nline.png', 'back\\slash.png',
                                                                   'plain.png'])
    os.rename(os.path.join(bytes(odd), b'plain.png'), os.path.join(bytes(odd), b'bad\xff.png'))
    result = run_cli('--mode=infer', '--infer_dir=%s' % odd, '--checkpoint_dir=%s' % (tmp_path / 'checkpoint'),
                     '--infer_output=%s' % (tmp_path / 'odd.txt'))
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / 'odd.txt').read_text(encoding='utf-8').split('\n')[:-1]
    assert len(lines) == 4 and all(len(line.split('\t')) == 4 for line in lines)
    assert sorted(line.split('\t')[0] for line in lines) == sorted(
        ['tab\\there.png', 'new\\nline.png', 'back\\\\slash.png', 'bad\\xff.png'])


@pytest.mark.slow
def test_a_train_dir_of_unreadable_files_is_an_error_naming_it(dataset):
    for path in (dataset / 'train').iterdir():
        path.write_bytes(b'not an image')
    result = train(dataset, '--max_steps=0')
    assert result.returncode == 2 and 'not one image of this folder can be read: %s' % (dataset / 'train') in \
        result.stderr
    assert 'finished' not in result.stdout and 'Traceback' not in result.stderr


@pytest.mark.slow
def test_a_model_that_does_not_fit_its_architecture_is_named(trained):
    tmp_path, _ = trained
    architecture = tmp_path / 'checkpoint' / 'architecture.json'
    saved = json.loads(architecture.read_text())
    architecture.write_text(json.dumps(dict(saved, num_hidden=48)))
    result = run_cli('--mode=val', *folders(tmp_path))
    assert result.returncode == 2 and 'does not fit the model built from' in result.stderr
    assert 'rnn/fw/layer_1' in result.stderr and '[48' in result.stderr and 'Traceback' not in result.stderr
    architecture.unlink()
    result = run_cli('--mode=infer', *folders(tmp_path))  # built from the default flags: another model
    assert result.returncode == 2 and 'has no architecture.json: give the flags it was trained with' in result.stderr


@pytest.mark.slow
def test_one_folder_for_training_and_validation_is_refused_by_helper_and_warned_by_main(dataset, tmp_path):
    labels = tmp_path / 'labels.txt'
    labels.write_text('1+2 3\n')
    write_text_images(str(tmp_path / 'images'), ['1+2'], names=['0.png'])
    result = run_cli('--labels_file=%s' % labels, '--images_dir=%s' % (tmp_path / 'images'), '--train_size=1',
                     '--train_dir=%s' % (tmp_path / 'both'), '--val_dir=%s' % (tmp_path / 'both'), script='helper.py')
    assert result.returncode == 2 and 'is --val_dir' in result.stderr and not (tmp_path / 'both').exists()
    result = train(dataset, '--val_dir=%s' % (dataset / 'train'), '--max_steps=1')
    assert result.returncode == 0 and '--train_dir and --val_dir are the same folder' in result.stderr


@pytest.mark.parametrize('text, value', [  # over 500 characters or too deep: None, whatever the stack
    ('1' + '+1' * 100, 101), ('(' * 50 + '2*3' + ')' * 50, 6), ('9' * 300, int('9' * 300)),
    ('1' + '+1' * 1000, None), ('9' * 5000, None), ('(' * 300 + '1' + ')' * 300, None)])
def test_expression_value_of_huge_inputs_is_its_value_or_none_never_an_error(text, value):
    assert utils.expression_value(text) == value


TENSORFLOW_LOG_LINE = re.compile(r'[IWEF]\d{4} \d\d:\d\d|WARNING: All log messages before absl')


@pytest.mark.slow
def test_start_up_prints_the_tools_messages_only(trained):
    tmp_path, _ = trained
    result = run_cli('--mode=val', *folders(tmp_path))  # as a user's shell has it: no log levels
    assert result.returncode == 0
    assert not TENSORFLOW_LOG_LINE.search(result.stderr) and 'cuInit' not in result.stderr, result.stderr
    noisy = subprocess.run([sys.executable, os.path.join(REPO, 'main.py'), '--mode=val', *folders(tmp_path)],
                           capture_output=True, text=True, env=dict(USER_ENVIRONMENT, TF_CPP_MIN_LOG_LEVEL='0'),
                           timeout=300)
    assert noisy.returncode == 0 and TENSORFLOW_LOG_LINE.search(noisy.stderr)  # the user's level wins


def checkpoint_state(folder):
    path = folder / 'checkpoint'
    return path.read_text() if path.exists() else None


# States of its folder that a training passes through (given the folder and its checkpoint state when the training
# started): the moments at which the test kills it, in this order.
KILL_MOMENTS = [('start-up', lambda folder, start: (folder / 'training.lock').exists()),
                ('its first checkpoint saved', lambda folder, start: checkpoint_state(folder) is not None),
                ('a later checkpoint saved', lambda folder, start: checkpoint_state(folder) not in (None, start))]


@pytest.mark.slow
def test_trainings_killed_at_chosen_moments_resume_and_their_folder_stays_readable(dataset):
    checkpoints = dataset / 'checkpoint'
    for moment, reached in KILL_MOMENTS:
        start = checkpoint_state(checkpoints)
        process = start_training(dataset, '--max_steps=100000', *(['--restore'] if start else []))
        wait_for(lambda: reached(checkpoints, start) or process.poll() is not None)
        process.send_signal(signal.SIGKILL)
        _, stderr = process.communicate()
        assert 'Traceback' not in stderr, (moment, stderr)
        if (checkpoints / 'checkpoint').exists():
            result = run_cli('--mode=infer', *folders(dataset))
            assert result.returncode == 0 and 'Traceback' not in result.stderr, (moment, result.stderr)
    result = train(dataset, '--restore', '--max_steps=100000', '--num_epochs=1')
    assert result.returncode == 0 and 'restored' in result.stdout, result.stderr


# --- round two: outputs, signals, saves, unreadable data, sizes ------------------

@pytest.mark.slow
def test_infer_output_that_is_a_link_is_written_through_and_bad_ones_refused_before_reading(trained):
    tmp_path, _ = trained
    target, link = tmp_path / 'kept' / 'readings.txt', tmp_path / 'result-link.txt'
    target.parent.mkdir()
    link.symlink_to(target)
    result = run_cli('--mode=infer', *folders(tmp_path), '--infer_output=%s' % link)
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and len(target.read_text().splitlines()) == 11
    for output, message in (('', '--infer_output is empty'), ('/proc/self/no-such-file', 'no permission to write in'),
                            (str(tmp_path / 'infer'), 'is a folder')):
        result = run_cli('--mode=infer', *folders(tmp_path), '--infer_output=%s' % output)
        assert result.returncode == 2 and message in result.stderr, (output, result.stderr)
        assert 'restored' not in result.stdout and 'Traceback' not in result.stderr


def read_line_with(process, text):
    """Reads a running process's stdout until a line holding text (every log line is flushed)."""
    for line in process.stdout:
        if text in line:
            return line
    raise AssertionError('%r never came; stderr: %s' % (text, process.stderr.read()))


@pytest.mark.slow
def test_sigterm_saves_the_step_and_exits_143_for_a_scheduler(dataset):
    process = start_training(dataset, '--max_steps=100000')
    wait_for(lambda: checkpoint_state(dataset / 'checkpoint') is not None or process.poll() is not None)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    step = int(re.search(r'interrupted at step (\d+)', stdout).group(1))
    assert process.returncode == 128 + signal.SIGTERM == 143 and 'Traceback' not in stderr
    assert 'stopped by SIGTERM: exit code 143' in stdout
    assert 'ocr-model-%d"' % step in checkpoint_state(dataset / 'checkpoint')


@pytest.mark.slow
def test_ctrl_c_while_reading_ends_quietly_and_writes_nothing(trained):
    tmp_path, _ = trained
    many = tmp_path / 'many'
    write_text_images(str(many), [str(i % 10) * 3 for i in range(600)])
    process = subprocess.Popen([sys.executable, os.path.join(REPO, 'main.py'), '--mode=infer', *folders(tmp_path),
                                '--infer_dir=%s' % many, '--batch_size=1'],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=USER_ENVIRONMENT)
    read_line_with(process, 'restored')
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130 and 'interrupted by SIGINT: no file was written' in stderr, stderr
    assert 'Traceback' not in stderr and not (tmp_path / 'result.txt').exists()


@pytest.mark.slow
def test_a_training_killed_between_its_first_validation_and_first_save_resumes(dataset):
    process = start_training(dataset, '--max_steps=100000', '--save_steps=100000')
    best = dataset / 'checkpoint' / 'best' / 'best.json'
    wait_for(lambda: best.exists() or process.poll() is not None)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    step = json.loads(best.read_text())['step']
    result = train(dataset, '--restore', '--max_steps=%d' % (step + 2))
    assert result.returncode == 0, result.stderr
    assert 'at step %d' % step in result.stdout and 'step %d: saved checkpoint' % (step + 2) in result.stdout


def copy_checkpoint(source_prefix, folder):
    for path in source_prefix.parent.glob(source_prefix.name + '.*'):
        shutil.copy(path, folder / path.name)


@pytest.mark.parametrize('moment', ['best checkpoint saved, best.json not yet',
                                    'best.json saved, the old best not yet removed'])
@pytest.mark.slow
def test_a_kill_during_a_best_model_save_leaves_best_json_its_checkpoint_and_model_json_agreeing(trained, moment):
    tmp_path, _ = trained
    best = tmp_path / 'checkpoint' / 'best'
    record = json.loads((best / 'best.json').read_text())
    assert record['step'] != 3  # the trained fixture validates at 2 and 4 and saves at 3 and 4
    copy_checkpoint(tmp_path / 'checkpoint' / 'ocr-model-3', best)
    (best / 'checkpoint').write_text('model_checkpoint_path: "ocr-model-3"\n')
    if moment.startswith('best.json saved'):
        record = dict(record, step=3)
        (best / 'best.json').write_text(json.dumps(record))
    result = run_cli('--mode=export', '--export_dir=%s' % (tmp_path / 'again'), '--export_formats=saved_model',
                     *folders(tmp_path))
    assert result.returncode == 0, result.stderr
    assert 'using the best validated model: step %d' % record['step'] in result.stdout
    exported = json.loads((tmp_path / 'again' / 'model.json').read_text())
    assert exported == {'step': record['step'], 'validation_accuracy': record['accuracy'],
                        'validation_cer': record['cer']}
    result = train(tmp_path, '--restore', '--max_steps=5')
    assert result.returncode == 0, result.stderr
    assert sorted(path.name.split('.')[0] for path in best.glob('ocr-model-*.index')) == \
        ['ocr-model-%d' % json.loads((best / 'best.json').read_text())['step']]


def test_a_failed_save_names_the_folder_and_where_restore_resumes(tmp_path):
    import main
    import tensorflow as tf
    folder = str(tmp_path / 'checkpoint')
    with pytest.raises(utils.UserError) as error:
        with main.save_errors(utils.ModelFolder(folder), 7, folder):
            raise tf.errors.ResourceExhaustedError(None, None, 'ocr-model-7.data: No space left on device\n'
                                                               'Hint: If you want to see a list of allocated tensors')
    assert str(error.value) == ('step 7: cannot save to %s: ocr-model-7.data: No space left on device. Make room '
                                'there, then continue with --restore (nothing was saved yet: it starts again)' % folder)


@pytest.mark.slow
def test_unreadable_val_images_stop_training_before_anything_is_written(trained):
    tmp_path, _ = trained
    for path in (tmp_path / 'val').iterdir():
        path.write_bytes(b'not an image')
    fresh = tmp_path / 'fresh'
    for mode, extra in (('train', ['--checkpoint_dir=%s' % fresh, *SMALL_MODEL_FLAGS]), ('val', [])):
        result = run_cli('--mode=%s' % mode, *folders(tmp_path), *extra)
        assert result.returncode == 2 and 'not one image of this folder can be read: %s (--val_dir' % (
            tmp_path / 'val') in result.stderr, (mode, result.stderr)
    assert not (fresh / 'architecture.json').exists()


@pytest.mark.slow
def test_damaged_architectures_and_checkpoints_are_named(trained):
    tmp_path, _ = trained
    checkpoint = tmp_path / 'checkpoint'
    architecture = checkpoint / 'architecture.json'
    saved = architecture.read_text()

    def refused(message):
        result = run_cli('--mode=val', *folders(tmp_path))
        return result.returncode == 2 and message in result.stderr and 'Traceback' not in result.stderr

    architecture.write_text(json.dumps(dict(json.loads(saved), num_hidden='32')))
    assert refused('%s: num_hidden="32": must be a whole number' % architecture)
    architecture.unlink()
    architecture.mkdir()
    assert refused('%s cannot be read (Is a directory)' % architecture)
    architecture.rmdir()
    architecture.write_text(saved)
    for pattern in ('*.data-*', '*.index'):  # truncated, as a full disk leaves them
        damaged = next((checkpoint / 'best').glob(pattern))
        damaged.write_bytes(damaged.read_bytes()[:100])
        assert refused('%s cannot be read' % (damaged.parent / damaged.name.split('.')[0]))
        assert refused('its files are damaged or incomplete; delete them to use an earlier checkpoint')
    for path in (checkpoint / 'best').glob('ocr-model-*'):  # as the error advises
        path.unlink()
    (checkpoint / 'checkpoint').write_bytes(b'\xff\xfe garbage')  # TensorFlow's list of checkpoints, damaged
    result = train(tmp_path, '--restore', '--checkpoint=latest', '--max_steps=6')
    assert result.returncode == 0 and 'restored %s at step 4' % (checkpoint / 'ocr-model-4') in result.stdout, \
        result.stderr
    assert 'ocr-model-6' in (checkpoint / 'checkpoint').read_text()


@pytest.mark.slow
def test_trainings_started_at_once_into_one_folder_one_trains_the_others_are_refused(dataset):
    lock = dataset / 'checkpoint' / 'training.lock'
    lock.parent.mkdir()
    lock.write_text('process 1 on a machine long gone\n')  # a lock file that no process holds
    starts = [start_training(dataset, '--max_steps=100000') for _ in range(3)]
    wait_for(lambda: sum(process.poll() is not None for process in starts) == 2)
    winner, = [process for process in starts if process.poll() is None]
    for process in starts:
        if process is not winner:
            assert process.returncode == 2 and 'is in use by another training (process %d on ' % winner.pid in \
                process.stderr.read()
    winner.send_signal(signal.SIGTERM)
    assert winner.wait(timeout=300) == 143


def test_a_lock_that_cannot_be_opened_is_named(tmp_path):
    (tmp_path / 'training.lock').mkdir()
    with pytest.raises(utils.UserError, match='training.lock cannot be opened as a lock file'):
        utils.ModelFolder(str(tmp_path)).check_not_in_use()


@pytest.mark.slow
def test_export_to_a_place_it_cannot_write_is_refused_by_name(trained):
    tmp_path, _ = trained
    image = next((tmp_path / 'infer').iterdir())
    for export_dir, message in ((image / 'model', ': %s is a file, not a folder' % image),
                                ('/proc/self/model', 'cannot be created|no permission to create folders in')):
        result = run_cli('--mode=export', '--export_dir=%s' % export_dir, *folders(tmp_path))
        assert result.returncode == 2 and '--export_dir=%s' % export_dir in result.stderr, result.stderr
        assert any(part in result.stderr for part in message.split('|')), result.stderr


def test_a_checkpoint_that_a_training_replaces_while_it_is_read_gives_way_to_the_new_one(tmp_path, flags, caplog,
                                                                                          monkeypatch):
    folder = utils.ModelFolder(str(tmp_path / 'model'))
    os.makedirs(folder.best_dir)
    for step in (3, 5):  # best/ as a training leaves it between writing best.json and removing the checkpoint it names
        (tmp_path / 'model' / 'best' / ('ocr-model-%d.index' % step)).write_bytes(b'')
    folder.save_best_record({'step': 5, 'accuracy': 0.5, 'cer': 0.1})
    flags()
    monkeypatch.setattr(main.time, 'sleep', lambda seconds: None)
    removed = main.Model(folder, None, os.path.join(folder.best_dir, 'ocr-model-3'), None, 'for the test')

    def read(model):  # the checkpoint read: the removed one raises, the new one reads
        if not os.path.exists(model.checkpoint + '.index'):
            raise main.UnreadableCheckpoint(model.checkpoint)
        return 'read'

    with utils.ModelFolder(folder.directory).locked():  # a training holds the folder
        model, result = main.read_checkpoint(removed, read)
        assert model.checkpoint.endswith('best/ocr-model-5') and result == 'read'
        assert 'ocr-model-3 changed while it was read (a training saves in' in caplog.text
        monkeypatch.setattr(main, 'READ_ATTEMPTS', 1)
        with pytest.raises(main.UnreadableCheckpoint, match='a training \\(process %d on .*\\) saves in .*read it again '
                           'when it has saved' % os.getpid()) as raised:
            main.read_checkpoint(removed._replace(checkpoint=str(tmp_path / 'model' / 'ocr-model-9')),
                                 main.checkpoint_variables)
        assert 'delete' not in str(raised.value)
    with pytest.raises(main.UnreadableCheckpoint, match='damaged or incomplete; delete them'):  # no training
        main.read_checkpoint(removed, main.checkpoint_variables)


@pytest.mark.slow
def test_outputs_that_are_files_of_the_model_being_read_are_refused_by_any_path(trained):
    tmp_path, _ = trained
    checkpoint = tmp_path / 'checkpoint'
    before = {path: path.read_bytes() for path in checkpoint.rglob('*') if path.is_file()}
    (tmp_path / 'soft.json').symlink_to(checkpoint / 'architecture.json')
    os.link(checkpoint / 'best' / 'best.json', tmp_path / 'hard.json')
    for flag in ('--infer_output=%s' % (checkpoint / 'architecture.json'), '--infer_output=%s' % (tmp_path / 'soft.json'),
                 '--infer_output=%s' % (tmp_path / 'hard.json'), '--infer_output=%s' % (checkpoint / 'best' / 'new.txt'),
                 '--export_dir=%s' % (checkpoint / 'best'), '--export_dir=%s' % checkpoint):
        result = run_cli('--mode=%s' % ('infer' if 'infer' in flag else 'export'), *folders(tmp_path), flag,
                         '--overwrite')
        assert result.returncode == 2 and '%s is in, or a link into, %s, the model being read' % (
            flag, checkpoint) in result.stderr, result.stderr
    assert before == {path: path.read_bytes() for path in checkpoint.rglob('*') if path.is_file()}


@pytest.mark.slow
def test_sizes_too_big_together_are_refused_by_the_memory_they_need_before_the_model_is_built(dataset):
    result = train(dataset, '--num_hidden=4096', '--rnn_layers=64', '--batch_size=16384')  # terabytes: no machine
    assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr
    assert re.search(r'--batch_size=16384 with image_height=32 image_width=96 cnn_count=3 out_channels=32 num_hidden=4096 '
                     r'rnn_layers=64 needs about \d+\.\d GB of memory \(weights \d+\.\d GB, copies in training '
                     r'\d+\.\d GB, activations \d+\.\d GB\); this machine gives it', result.stderr)
    assert not (dataset / 'checkpoint' / 'architecture.json').exists()


def test_a_run_close_to_the_memory_the_machine_gives_is_warned_about(flags, monkeypatch, caplog):
    flags()
    arch = utils.architecture_from_flags()
    needed = sum(main.ocr.memory_needed(arch, 64).values())
    monkeypatch.setattr(utils, 'memory_available', lambda: (needed * 1.1, 'its memory limit (cgroup)'))
    main.check_memory(arch, 64)
    assert 'warning: --batch_size=64 with image_height=40' in caplog.text and 'it may run out of memory' in caplog.text
    with pytest.raises(utils.UserError, match='this machine gives it .* GB \\(its memory limit \\(cgroup\\)\\): lower'):
        main.check_memory(arch, 128)
    caplog.clear()
    main.check_memory(arch, 8)
    assert caplog.text == ''


@pytest.mark.slow
def test_infer_and_val_judge_the_batch_by_the_models_images_not_the_flags_defaults(trained):
    tmp_path, _ = trained
    for mode in ('infer', 'val'):  # 16384 images of the flags' default 40x120 were refused as too many pixels
        result = run_cli('--mode=%s' % mode, '--batch_size=16384', *folders(tmp_path))
        assert result.returncode == 0, result.stderr
    assert len((tmp_path / 'result.txt').read_text().splitlines()) == 11
