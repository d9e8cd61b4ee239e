"""Student side: DeepSpeed ZeRO trainer actors and the distillation losses."""
