"""spark-submit entry point: ``spark-submit [confs] gpu_inject_spark.py run --executor spark
--manifest ... --coadd-root ... --out ... --experiment-id ...``.

spark-submit runs Python files, not console scripts; this is ``gpu-inject`` itself. The run
uses the session spark-submit configured (master, resources): no --spark-master needed.
"""
from gpu_inject.cli import main

if __name__ == "__main__":
    main()
