"""This machine: what each part of hps-surgeon finds here (`doctor`), and the native build (`build-native`)."""
