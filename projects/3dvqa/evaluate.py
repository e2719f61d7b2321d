"""EM@1 / EM@10 (plain and SQA3D-refined) and EM@1 per SQA3D question type, from files or a trained run.

From files:
    python projects/3dvqa/evaluate.py --annotations ScanQA_v1.0_val.json --results R.json
    python projects/3dvqa/evaluate.py --questions v1_balanced_questions_test_scannetv2.json \\
        --annotations v1_balanced_sqa_annotations_test_scannetv2.json --results R.json
From a trained run (writes results_<split>.json in ScanQA's submission layout):
    python projects/3dvqa/evaluate.py --checkpoint runs/x/model_final.pt --split test
Prints one JSON object (em1, em10, em1_refined, em10_refined, per_type); bad input: one line on stderr, exit 2.
"""

import sys

from mmllm_3dvqa.task import main

if __name__ == "__main__":
    sys.exit(main())
