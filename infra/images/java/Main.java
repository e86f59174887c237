import java.util.stream.IntStream;

public class Main {
    public static void main(String[] args) {
        int total = IntStream.rangeClosed(1, 100).sum();
        System.out.println("hello from java " + Runtime.version().feature() + ": " + total);
    }
}
