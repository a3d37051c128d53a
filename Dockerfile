# One image for every service; compose picks the command.
FROM python:3.11-slim
ARG TORCH_SPEC="torch"
ARG TORCH_INDEX="https://download.pytorch.org/whl/cpu"
WORKDIR /app
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX" "$TORCH_SPEC"
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY configs ./configs
RUN pip install --no-cache-dir .
ENV PYTHONUNBUFFERED=1
# gateway (dashboard, REST, /metrics), tensorboard
EXPOSE 8000 6006
