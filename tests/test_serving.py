"""The SavedModel that --mode=export writes, loaded as a server would: TensorFlow alone, in a fresh process started
from another folder, reading encoded image files; its readings and confidences equal --mode=infer's."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from PIL import Image

from conftest import REPO, png_claiming, run_cli

pytestmark = pytest.mark.slow  # every test here runs the CLI several times or for long

SERVE = r'''
import json, sys
import tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures['serving_default']
images = [open(path, 'rb').read() for path in sys.argv[2:]]
out = serve(image_bytes=tf.constant(images, tf.string))
print(json.dumps({'text': [t.decode() for t in out['text'].numpy()],
                  'confidence': [float(c) for c in out['confidence'].numpy()],
                  'readable': [bool(r) for r in out['readable'].numpy()]}))
'''


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """The shipped model exported, and the bundled infer images plus a JPEG, a BMP, a transparent PNG and a blank
    image."""
    folder = tmp_path_factory.mktemp('serving')
    result = run_cli('--mode=export', '--checkpoint_dir=%s' % os.path.join(REPO, 'imgs', 'model'),
                     '--export_dir=%s' % (folder / 'export'), '--export_formats=saved_model')
    assert result.returncode == 0, result.stderr
    assert 'the SavedModel reads with --decoder=beam --beam_width=10' in result.stdout  # baked in, and said
    images = folder / 'images'
    images.mkdir()
    sample = cv2.imread(os.path.join(REPO, 'imgs', 'infer', '1.png'))
    cv2.imwrite(str(images / 'photo.jpg'), sample, [cv2.IMWRITE_JPEG_QUALITY, 90])
    cv2.imwrite(str(images / 'bitmap.bmp'), sample)
    ink = cv2.cvtColor(sample, cv2.COLOR_BGR2GRAY) < 128
    cv2.imwrite(str(images / 'transparent.png'), np.dstack([np.zeros_like(sample), np.where(ink, 255, 0)]))
    cv2.imwrite(str(images / 'blank.png'), np.full((60, 180, 3), 255, np.uint8))
    for name in sorted(os.listdir(os.path.join(REPO, 'imgs', 'infer')))[:30]:
        os.link(os.path.join(REPO, 'imgs', 'infer', name), images / name)
    return folder


def test_saved_model_reads_encoded_images_as_infer_does(exported):
    names = sorted(os.listdir(exported / 'images'))
    served = subprocess.run([sys.executable, '-c', SERVE, str(exported / 'export'),
                             *[str(exported / 'images' / name) for name in names]],
                            capture_output=True, text=True, cwd=str(exported), timeout=300)
    assert served.returncode == 0, served.stderr
    served = json.loads(served.stdout.splitlines()[-1])
    result = run_cli('--mode=infer', '--checkpoint_dir=%s' % (exported / 'export'),
                     '--infer_dir=%s' % (exported / 'images'), '--infer_output=%s' % (exported / 'result.txt'))
    assert result.returncode == 0, result.stderr
    infer = {line.split('\t')[0]: line.split('\t') for line in (exported / 'result.txt').read_text().splitlines()}
    for name, text, confidence in zip(names, served['text'], served['confidence']):
        assert text == infer[name][1], name
        assert 0 <= confidence <= 1 and abs(confidence - float(infer[name][3])) < 0.02, name
    assert served['text'][names.index('transparent.png')] == served['text'][names.index('bitmap.bmp')] != ''


def test_saved_model_signature_and_files(exported):
    assert {'saved_model.pb', 'variables', 'ocr-model.index', 'architecture.json'} <= set(
        os.listdir(exported / 'export'))
    shown = subprocess.run([sys.executable, '-c', 'import sys, tensorflow as tf; s = tf.saved_model.load(sys.argv[1])'
                            '.signatures["serving_default"]; print(s.structured_input_signature, '
                            'sorted(s.structured_outputs))', str(exported / 'export')],
                           capture_output=True, text=True, cwd=str(exported), timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert "'image_bytes': TensorSpec(shape=(None,), dtype=tf.string" in shown.stdout
    assert "['confidence', 'readable', 'text']" in shown.stdout


def serve(exported, paths):
    served = subprocess.run([sys.executable, '-c', SERVE, str(exported / 'export'), *map(str, paths)],
                            capture_output=True, text=True, cwd=str(exported), timeout=300)
    assert served.returncode == 0, served.stderr
    return json.loads(served.stdout.splitlines()[-1])


def test_a_bad_image_reads_empty_and_unreadable_without_failing_the_batch(exported):
    """A GIF reads as its PNG does; an empty batch gives empty outputs; a file that is not an image, a truncated
    one and one that claims 40,000 x 40,000 pixels read as '' with confidence 0 and readable false."""
    images = exported / 'images'
    Image.open(images / '0.png').save(exported / 'same.gif')
    (exported / 'text.png').write_bytes(b'not an image')
    (exported / 'cut.png').write_bytes((images / '0.png').read_bytes()[:200])
    (exported / 'bomb.png').write_bytes(png_claiming(40000, 40000))
    paths = [images / '0.png', exported / 'text.png', exported / 'same.gif', exported / 'cut.png',
             exported / 'bomb.png']
    served = serve(exported, paths)
    assert served['readable'] == [True, False, True, False, False]
    assert served['text'][0] == served['text'][2] != '' and served['text'][1::2] == ['', '']
    assert served['confidence'][1] == served['confidence'][3] == served['confidence'][4] == 0
    assert serve(exported, []) == {'text': [], 'confidence': [], 'readable': []}
