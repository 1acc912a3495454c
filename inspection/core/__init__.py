"""The torch-free core: what the line side may import from outside deploy/ (numpy and OpenCV; PyYAML for settings
files, Pillow for dataset images).

boxes      the box rule: attention map → defect boxes
decision   pass / review / fail from a defect score
preprocess frame → model input
imageio    image, mask and map files with errors a person can act on
layout     the dataset folder layout, its manifest and split
mapfile    attention maps stored as 16-bit PNG
novelty    distance of a map cell's features to the good parts' feature bank
overlay    the map and boxes drawn on a frame
settings   a YAML file with `section.key=value` overrides
errors     UserError, the base of every error a person can fix
"""
