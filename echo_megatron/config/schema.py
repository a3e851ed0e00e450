"""The experiment config: one structured dataclass composed of the section dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from echo_megatron.config.data import DataConfig, TestbedConfig
from echo_megatron.config.model import ModelConfig, ParallelConfig
from echo_megatron.config.rl import (
    ClusterConfig,
    EvalConfig,
    FormatsConfig,
    RewardConfig,
    RLConfig,
    RolloutConfig,
)
from echo_megatron.config.training import (
    CheckpointConfig,
    FP8Config,
    LoggingConfig,
    OptimizerConfig,
    ScheduleConfig,
    TrainConfig,
)


@dataclass
class ExperimentConfig:
    name: str = "run"
    run_dir: str = "runs/${name}"
    description: Optional[str] = None
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    testbed: TestbedConfig = field(default_factory=TestbedConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fp8: FP8Config = field(default_factory=FP8Config)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    formats: FormatsConfig = field(default_factory=FormatsConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
