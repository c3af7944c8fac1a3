"""tf.Transform preprocessing and the feature spec, the one home of feature names and shapes."""
