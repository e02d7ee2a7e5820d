"""Benchmark machinery and figures behind ``tools/analysis``.

Modules (import the one you need; this package imports none of them, so that
``import mmdet_ela`` needs neither matplotlib nor the benchmark code):

``timing``          interleaved repeats, medians, ratios to a baseline
``memory``          peak CUDA memory of a step; peak RSS in a fresh process
``flops``           FLOPs per image (mmengine ``FlopAnalyzer`` + attention ops)
``variants``        ``plain_model_cfg``, ``drop_pretrained``, ``build_model``
``workload``        synthetic mmdet data batches, the timed train / infer steps
``bench_config``    benchmark settings, variants and workloads to build
``benchmark``       ``run_benchmark``: build, measure, compare
``report``          environment and the printed table
``settings``        configs and EBQM settings for the tools
``attention_stats`` pairwise KL and mean attention gathered while scoring
``plots``, ``plot_records``, ``plot_benchmark``, ``plot_utils``  figures
"""
