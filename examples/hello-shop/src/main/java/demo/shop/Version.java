package demo.shop;

/** The version this build reports (the demo's second commit changes it). */
final class Version {
    static final String NAME = "v1";

    private Version() {}
}
