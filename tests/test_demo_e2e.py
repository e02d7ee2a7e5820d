"""A shortened demo, end to end: dataset -> train with pruning -> COCO mAP."""
import os.path as osp

import pytest
from helpers import ROOT, read_json
from mmengine.runner import Runner

pytestmark = pytest.mark.slow


def _untrained_map(args) -> float:
    import demo
    cfg = demo.build_config(args)
    cfg.work_dir = args.work_dir + '_untrained'
    cfg.model.test_cfg.score_thr = 0.0  # keep every box of the untrained model
    runner = Runner.from_cfg(cfg)
    runner.model.init_weights()
    metrics = runner.test()
    return metrics.get('coco/bbox_mAP', 0.0)


def test_short_demo_learns_and_prunes(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(osp.join(ROOT, 'tools'))
    import demo
    args = demo.parse_args([
        '--work-dir',
        str(tmp_path / 'demo'), '--data-root',
        str(tmp_path / 'shapes'), '--num-train', '200', '--num-val', '40',
        '--epochs', '15', '--prune-after', '3'
    ])
    summary = demo.run_demo(args)
    untrained = _untrained_map(args)
    print('untrained mAP', untrained, 'trained', summary)
    assert summary['bbox_mAP'] >= 0.03
    assert summary['bbox_mAP'] > 5 * untrained
    assert summary['units_pruned'] >= 1
    assert summary['params_final'] < summary['params_dense']
    assert osp.exists(summary['checkpoint'])
    record = read_json(osp.join(summary['prune_records'], 'round_1.json'))
    assert record['progress'] == 3
    assert read_json(osp.join(args.work_dir, 'demo_summary.json')) \
        == summary
