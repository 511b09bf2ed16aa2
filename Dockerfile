# Two images from one file. The TensorFlow and TF Serving versions match setup.py's pins.
#
#   docker build --target trainer -t qrec-trainer .
#   docker run --rm -v "$PWD/data:/data" -v "$PWD/models:/models" qrec-trainer \
#       --config configs/queryrec.yaml --data /data --model-dir /models/queryrec
#
#   python -m qrec_tf.export --model-dir models/queryrec --output export/queryrec
#   docker build --target serving -t qrec-serving .          # copies export/queryrec/
#   docker run --rm -p 8500:8500 -p 8501:8501 qrec-serving
#
#   docker build --target beam-worker -t REGISTRY/qrec-beam-worker .   # Beam jobs on a cluster
#
# The serving image is tensorflow/serving with the export and serving/*.config inside; its
# command enables request batching, Prometheus monitoring and XLA:CPU, which the export's
# score_candidates signature runs on (README, "Export and serving").
ARG TF_VERSION=2.21.0
# The Beam worker image's Python must be the launching interpreter's minor version (pickles).
ARG PY_VERSION=3.11

# --- trainer: the package on the TensorFlow image; `python -m qrec_tf.train ARGS` --------------
FROM tensorflow/tensorflow:${TF_VERSION} AS trainer
WORKDIR /app
COPY setup.py ./
COPY qrec_tf/ qrec_tf/
COPY pipelines/ pipelines/
COPY serving/ serving/
COPY configs/ configs/
# TensorFlow is already in the image at the pinned version, so pip keeps it.
RUN pip install --no-cache-dir . && python3 -c "import qrec_tf.train"
ENTRYPOINT ["python3", "-m", "qrec_tf.train"]
CMD ["--help"]

# --- serving: TF Serving at the same version, with one exported model ------------------------
FROM tensorflow/serving:${TF_VERSION} AS serving
ARG MODEL_NAME=queryrec
# Every numbered version under export/<name>/; TF Serving serves the newest.
COPY export/${MODEL_NAME}/ /models/${MODEL_NAME}/
COPY serving/models.config serving/batching.config serving/monitoring.config /config/
RUN sed -i "s/\"queryrec\"/\"${MODEL_NAME}\"/; s#/models/queryrec#/models/${MODEL_NAME}#" \
        /config/models.config
EXPOSE 8500 8501
# Appended to the image's entrypoint (tensorflow_model_server); --model_config_file makes it
# ignore the image's default --model_name/--model_base_path.
CMD ["--model_config_file=/config/models.config", \
     "--enable_batching=true", "--batching_parameters_file=/config/batching.config", \
     "--monitoring_config_file=/config/monitoring.config", \
     "--xla_cpu_compilation_enabled=true", \
     "--rest_api_port=8501", "--port=8500"]

# --- beam-worker: SDK container of the Beam jobs on Dataflow / Flink / Spark ------------------
# Beam's own SDK image (its entrypoint, /opt/apache/beam/boot, runs the SDK worker) with this
# package installed, so workers unpickle pipelines.* and qrec_tf.*. README, "Running on a cluster".
FROM apache/beam_python${PY_VERSION}_sdk:2.77.0 AS beam-worker
WORKDIR /app
COPY setup.py ./
COPY qrec_tf/ qrec_tf/
COPY pipelines/ pipelines/
COPY serving/ serving/
RUN pip install --no-cache-dir ".[score]" && python -c "import pipelines.build_tfrecords, pipelines.analysis, pipelines.score, apache_beam.ml.inference.tensorflow_inference"
