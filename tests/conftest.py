"""Small generated data sets, a way to run the command line as a user does, a model trained once for the whole
session, and the quick tier: `pytest -m "not slow"` leaves out the tests marked slow."""
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import utils  # noqa: E402  (first: it sets OpenCV's pixel bound, which OpenCV reads when it loads)

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
tf.compat.v1.disable_eager_execution()

# A small model that trains in seconds: 32x96 grey images, 3 conv units -> 12 time steps, one LSTM layer.
SMALL_MODEL_FLAGS = ['--image_height=32', '--image_width=96', '--cnn_count=3', '--out_channels=32', '--max_stepsize=0',
                     '--num_hidden=32', '--rnn_layers=1', '--rnn_cell=lstm', '--nobidirectional']


def write_text_images(folder, labels, names=None, size=(32, 96), seed=0):
    """One image per label, the text drawn with OpenCV; names default to `<index>_<label>.png`."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index, label in enumerate(labels):
        height, width = size
        image = np.full((height, width, 3), 255, np.uint8)
        scale = 0.7 * height / 32
        x, y = int(rng.integers(0, 6)), int(height * 0.7 + rng.integers(-2, 3))
        cv2.putText(image, label, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 2)
        name = names[index] if names else '%d_%s.png' % (index, label)
        paths.append(os.path.join(folder, name))
        cv2.imwrite(paths[-1], image)
    return paths


def png_claiming(width, height):
    """A small PNG file whose header claims width x height pixels (the CRC fixed): what a decompression bomb
    looks like before it is decoded."""
    data = bytearray(cv2.imencode('.png', np.zeros((4, 4), np.uint8))[1].tobytes())
    data[16:24] = struct.pack('>II', width, height)
    data[29:33] = struct.pack('>I', zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def hdr_of(width, height):
    """A Radiance HDR file of width x height pixels, every scanline run-length encoded (about 570 bytes for 9,000
    pixels): a few MB that OpenCV, unbounded, decodes to gigabytes of float pixels."""
    runs = bytes([128 + 127, 200]) * (width // 127) + (bytes([128 + width % 127, 200]) if width % 127 else b'')
    scanline = bytes([2, 2, width >> 8, width & 255]) + runs * 4
    return b'#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y %d +X %d\n' % (height, width) + scanline * height


def random_labels(count, charset='0123456789', min_len=2, max_len=5, seed=0):
    rng = np.random.default_rng(seed)
    return [''.join(rng.choice(list(charset), rng.integers(min_len, max_len + 1))) for _ in range(count)]


# The environment of a user's shell: without the log levels that importing utils set in this process.
USER_ENVIRONMENT = {name: value for name, value in os.environ.items()
                    if name not in ('TF_CPP_MIN_LOG_LEVEL', 'OPENCV_LOG_LEVEL')}


def run_cli(*args, script='main.py', cwd=REPO):
    """Runs a script of the repository as a user does; returns the finished process (text output)."""
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600, env=USER_ENVIRONMENT)


@pytest.fixture
def flags():
    """Parses main.py's flags in this process (flags(*arguments)) and forgets them after the test."""
    def parse(*extra):
        utils.FLAGS.unparse_flags()
        utils.FLAGS(['main.py', *extra])
    yield parse
    utils.FLAGS.unparse_flags()


def write_dataset(tmp_path):
    """train (50), val (23) and infer (11, unlabelled names) folders of small digit images."""
    write_text_images(str(tmp_path / 'train'), random_labels(50, seed=1))
    write_text_images(str(tmp_path / 'val'), random_labels(23, seed=2))
    infer_labels = random_labels(11, seed=3)
    write_text_images(str(tmp_path / 'infer'), infer_labels, names=['%d.png' % i for i in range(11)])
    return tmp_path


@pytest.fixture
def dataset(tmp_path):
    """A folder of write_dataset's folders."""
    return write_dataset(tmp_path)


def folders(tmp_path):
    """The folder flags of main.py, all under tmp_path, and the digits' charset of write_dataset."""
    return ['--train_dir=%s' % (tmp_path / 'train'), '--val_dir=%s' % (tmp_path / 'val'),
            '--infer_dir=%s' % (tmp_path / 'infer'), '--checkpoint_dir=%s' % (tmp_path / 'checkpoint'),
            '--log_dir=%s' % (tmp_path / 'log'), '--infer_output=%s' % (tmp_path / 'result.txt'),
            '--charset=0123456789']


def train(tmp_path, *extra):
    """Four steps of the small model on write_dataset's folders, validating at 2 and 4, saving at 3 and 4."""
    return run_cli('--mode=train', '--batch_size=16', '--validation_steps=2', '--save_steps=3', '--max_steps=4',
                   *SMALL_MODEL_FLAGS, *folders(tmp_path), *extra)


@pytest.fixture(scope='session')
def trained_once(tmp_path_factory):
    folder = write_dataset(tmp_path_factory.mktemp('trained'))
    result = train(folder)
    assert result.returncode == 0, result.stderr
    exported = run_cli('--mode=export', '--export_dir=%s' % (folder / 'export'), '--export_formats=saved_model',
                       *folders(folder))
    assert exported.returncode == 0, exported.stderr
    return folder, result


@pytest.fixture
def trained(trained_once, tmp_path):
    """A copy of the session's trained folder (data, checkpoint, log, and `export`, the model exported from it) that
    a test may change, and the training's output."""
    folder, result = trained_once
    shutil.copytree(folder, tmp_path, dirs_exist_ok=True)
    return tmp_path, result


def portable_runner(path, threads=None):
    """A model.tflite (LiteRT) or model.onnx (ONNX Runtime) of an export as a function: uint8 pixels [n, h, w, c]
    -> (labels [n, time_steps], confidence [n]); on `threads` threads (None: the runtime's default)."""
    if str(path).endswith('.onnx'):
        import onnxruntime
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = onnxruntime.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
        return lambda pixels: tuple(session.run(['labels', 'confidence'], {'image': pixels}))
    from ai_edge_litert.interpreter import Interpreter
    runner = Interpreter(model_path=str(path), num_threads=threads).get_signature_runner('serving_default')
    return lambda pixels: (lambda out: (out['labels'], out['confidence']))(runner(image=pixels))


def wait_for(condition, seconds=240, explain=lambda: 'timed out'):
    """Waits until condition() holds: a state of files or processes, never a time. Fails after `seconds`."""
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, explain()
        time.sleep(0.2)


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: a test that trains several times or runs several processes for '
                                       'long; the quick tier (-m "not slow") leaves it out')
