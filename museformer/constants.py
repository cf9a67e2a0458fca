"""Token strings the plugin looks up in the fairseq dictionary (never by index)."""
BAR_TOKEN = "Bar_None"
EOS_TYPE = "</s>"
MEAN = "mean"  # --type-temperature TYPE=mean: decode that type as the bin nearest the expected value
TEMPO_LEVEL_TYPE = "TempoLevel"  # the relative tempo encoding's once-per-piece level (docs/tokens.md)
# the plans' priors a segment carries to the decoding rules (Renderer.plans_of; museformer.decoding.rules)
PLAN_PRIORS = ("tempo_plan", "velocity_plan", "articulation_plan", "timing_plan")
