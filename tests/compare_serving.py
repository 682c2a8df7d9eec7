"""A script, not a test: how the models of an export read a folder of `<id>_<label>` images against
`main.py --mode=infer` on the same folder: the SavedModel (TensorFlow's decoding and resizing against OpenCV's)
against infer's default beam decoder, and model.tflite, model_int8.tflite and model.onnx (on infer's pixels) against
`--decoder=greedy`:

    python main.py --mode=export --checkpoint_dir=imgs/model --export_dir=/tmp/served
    python tests/compare_serving.py --export_dir=/tmp/served --images_dir=DIR

prints, per model, the share of images it reads as infer does, and the accuracy of each.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import numpy as np  # noqa: E402
from utils import label_from_filename, list_images, read_image  # noqa: E402  (the repository is not a package)
PORTABLE_MODELS = ('model.tflite', 'model_int8.tflite', 'model.onnx')


def served_readings(export_dir, paths, batch_size=256):
    serve = tf.saved_model.load(export_dir).signatures['serving_default']
    readings = []
    for start in range(0, len(paths), batch_size):
        encoded = [open(path, 'rb').read() for path in paths[start:start + batch_size]]
        readings += [text.decode() for text in serve(image_bytes=tf.constant(encoded))['text'].numpy()]
    return readings


def portable_readings(path, paths, arch, batch_size=64):
    """The readings of a LiteRT or ONNX model of the export, on the pixels infer reads."""
    pixels = np.stack([read_image(p, arch['image_height'], arch['image_width'], arch['image_channel'])[0]
                       for p in paths])
    if path.endswith('.onnx'):
        import onnxruntime
        session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
        run = lambda batch: session.run(['labels'], {'image': batch})[0]  # noqa: E731
    else:
        from ai_edge_litert.interpreter import Interpreter
        runner = Interpreter(model_path=path).get_signature_runner('serving_default')
        run = lambda batch: runner(image=batch)['labels']  # noqa: E731
    labels = np.concatenate([run(pixels[start:start + batch_size]) for start in range(0, len(pixels), batch_size)])
    return [''.join(arch['charset'][index] for index in row if index >= 0) for row in labels]


def infer_readings(export_dir, images_dir, decoder='beam'):
    with tempfile.TemporaryDirectory() as work:
        output = os.path.join(work, 'result.txt')
        subprocess.run([sys.executable, os.path.join(REPO, 'main.py'), '--mode=infer', '--checkpoint_dir=' + export_dir,
                        '--infer_dir=' + images_dir, '--infer_output=' + output, '--batch_size=256',
                        '--decoder=' + decoder], check=True, capture_output=True)
        with open(output) as result:
            return {line.split('\t')[0]: line.split('\t')[1] for line in result.read().splitlines()}


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--export_dir', required=True)
    parser.add_argument('--images_dir', required=True)
    args = parser.parse_args(argv)
    paths = list_images(args.images_dir, 'images_dir')
    labels = [label_from_filename(path) for path in paths]
    with open(os.path.join(args.export_dir, 'architecture.json')) as file:
        arch = json.load(file)
    models = [('SavedModel', 'beam', served_readings(args.export_dir, paths))]
    models += [(name, 'greedy', portable_readings(os.path.join(args.export_dir, name), paths, arch))
               for name in PORTABLE_MODELS if os.path.exists(os.path.join(args.export_dir, name))]
    for decoder in ('beam', 'greedy'):
        inferred = infer_readings(args.export_dir, args.images_dir, decoder)
        inferred = [inferred[os.path.basename(path)] for path in paths]
        print('%d images: infer --decoder=%s accuracy %.2f%%' % (
            len(paths), decoder, 100 * sum(i == l for i, l in zip(inferred, labels)) / len(paths)))
        for name, _, readings in (model for model in models if model[1] == decoder):
            same = sum(a == b for a, b in zip(readings, inferred))
            print('  %s: read as infer %.2f%%, accuracy %.2f%%' % (
                name, 100 * same / len(paths), 100 * sum(r == l for r, l in zip(readings, labels)) / len(paths)))

if __name__ == '__main__':
    tf.get_logger().setLevel('ERROR')
    main(sys.argv[1:])
