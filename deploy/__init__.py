"""Line-side code: model export, the torch-free runtime, the line runner and the review station (to come)."""
