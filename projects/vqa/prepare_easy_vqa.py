"""Convert easy-VQA to VQAv2-format files: python projects/vqa/prepare_easy_vqa.py [--out data/easy_vqa]"""

import argparse
import json

from mmllm_vqa.easy_vqa_convert import convert

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="data/easy_vqa")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    args = parser.parse_args()
    print(json.dumps(convert(args.out, args.val_fraction), indent=1))
