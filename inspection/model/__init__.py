"""The network and what defines it (torch; pydantic for the config): imported by training and export, never by
the line side.

abn        the Attention Branch Network, the Grad-CAM baseline's plain CNN, checkpoints that rebuild them
backbones  EfficientNet-Lite0, ResNet and a tiny test trunk, cut at the attention stride
losses     L_classify, L_att, L_normal, L_defect, L_map
config     the typed training configuration (data, model, train, eval)
"""
