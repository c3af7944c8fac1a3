"""The foundation every other package stands on: the typed config, the TensorFlow environment switch, the scene
folder a user hands in and the model folder the pipeline publishes. It imports nothing from terrafuse above it."""
