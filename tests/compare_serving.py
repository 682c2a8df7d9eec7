"""A script, not a test: how the SavedModel of an export reads a folder of `<id>_<label>` images against
`main.py --mode=infer` on the same folder (TensorFlow's decoding and resizing against OpenCV's):

    python main.py --mode=export --checkpoint_dir=imgs/model --export_dir=/tmp/served
    python tests/compare_serving.py --export_dir=/tmp/served --images_dir=DIR

prints the share of images both read alike, and the accuracy of each.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from utils import label_from_filename, list_images  # noqa: E402  (the repository is not a package)


def served_readings(export_dir, paths, batch_size=256):
    serve = tf.saved_model.load(export_dir).signatures['serving_default']
    readings = []
    for start in range(0, len(paths), batch_size):
        encoded = [open(path, 'rb').read() for path in paths[start:start + batch_size]]
        readings += [text.decode() for text in serve(image_bytes=tf.constant(encoded))['text'].numpy()]
    return readings


def infer_readings(export_dir, images_dir):
    with tempfile.TemporaryDirectory() as work:
        output = os.path.join(work, 'result.txt')
        subprocess.run([sys.executable, os.path.join(REPO, 'main.py'), '--mode=infer', '--checkpoint_dir=' + export_dir,
                        '--infer_dir=' + images_dir, '--infer_output=' + output, '--batch_size=256'], check=True,
                       capture_output=True)
        with open(output) as result:
            return {line.split('\t')[0]: line.split('\t')[1] for line in result.read().splitlines()}


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--export_dir', required=True)
    parser.add_argument('--images_dir', required=True)
    args = parser.parse_args(argv)
    paths = list_images(args.images_dir, 'images_dir')
    labels = [label_from_filename(path) for path in paths]
    served = served_readings(args.export_dir, paths)
    inferred = infer_readings(args.export_dir, args.images_dir)
    inferred = [inferred[os.path.basename(path)] for path in paths]
    same = sum(a == b for a, b in zip(served, inferred))
    print('%d images: read alike %.2f%%; accuracy served %.2f%%, infer %.2f%%' % (
        len(paths), 100 * same / len(paths), 100 * sum(s == l for s, l in zip(served, labels)) / len(paths),
        100 * sum(i == l for i, l in zip(inferred, labels)) / len(paths)))


if __name__ == '__main__':
    tf.get_logger().setLevel('ERROR')
    main(sys.argv[1:])
