-- A small online shop: customers place orders; each order has one line per product.
-- unit_price is the price charged on that order line (it can be below the product's list price).
-- shipped_date is NULL for orders not shipped (pending or cancelled). Dates are ISO text (YYYY-MM-DD).
PRAGMA foreign_keys = ON;

CREATE TABLE customers (
    customer_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT,
    city TEXT NOT NULL,
    country TEXT NOT NULL,
    signup_date TEXT NOT NULL
);

CREATE TABLE products (
    product_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    category TEXT NOT NULL,
    price REAL NOT NULL,
    stock INTEGER NOT NULL
);

CREATE TABLE orders (
    order_id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers (customer_id),
    order_date TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'shipped', 'delivered', 'cancelled')),
    shipped_date TEXT
);

CREATE TABLE order_items (
    order_id INTEGER NOT NULL REFERENCES orders (order_id),
    product_id INTEGER NOT NULL REFERENCES products (product_id),
    quantity INTEGER NOT NULL,
    unit_price REAL NOT NULL,
    PRIMARY KEY (order_id, product_id)
);

INSERT INTO customers (customer_id, name, email, city, country, signup_date) VALUES
    (1, 'Anna Schmidt', 'anna@example.com', 'Berlin', 'Germany', '2022-01-10'),
    (2, 'Brian Walsh', 'brian@example.com', 'Dublin', 'Ireland', '2022-02-14'),
    (3, 'Carla Mendes', NULL, 'Lisbon', 'Portugal', '2022-03-03'),
    (4, 'Dmitri Ivanov', 'dmitri@example.com', 'Berlin', 'Germany', '2022-04-21'),
    (5, 'Eva Lind', 'eva@example.com', 'Stockholm', 'Sweden', '2022-05-30'),
    (6, 'Felix Braun', 'felix@example.com', 'Munich', 'Germany', '2022-07-12'),
    (7, 'Giulia Conti', NULL, 'Milan', 'Italy', '2022-08-08'),
    (8, 'Hannah Meyer', 'hannah@example.com', 'Hamburg', 'Germany', '2022-09-19'),
    (9, 'Ivan Novak', 'ivan@example.com', 'Prague', 'Czechia', '2022-11-02'),
    (10, 'Julia Costa', 'julia@example.com', 'Porto', 'Portugal', '2023-01-15'),
    (11, 'Karl Jensen', NULL, 'Copenhagen', 'Denmark', '2023-02-27'),
    (12, 'Laura Fischer', 'laura@example.com', 'Berlin', 'Germany', '2023-04-04'),
    (13, 'Marco Ricci', 'marco@example.com', 'Rome', 'Italy', '2023-05-16'),
    (14, 'Nina Berg', 'nina@example.com', 'Oslo', 'Norway', '2023-06-25'),
    (15, 'Oscar Dahl', 'oscar@example.com', 'Stockholm', 'Sweden', '2023-08-09'),
    (16, 'Paula Garcia', NULL, 'Madrid', 'Spain', '2023-10-01'),
    (17, 'Rui Santos', 'rui@example.com', 'Lisbon', 'Portugal', '2023-11-20'),
    (18, 'Sara Nilsson', 'sara@example.com', 'Gothenburg', 'Sweden', '2024-01-05');

INSERT INTO products (product_id, name, category, price, stock) VALUES
    (1, 'Wireless Mouse', 'Electronics', 24.99, 120),
    (2, 'Mechanical Keyboard', 'Electronics', 89.50, 45),
    (3, 'USB-C Hub', 'Electronics', 39.00, 0),
    (4, '27-inch Monitor', 'Electronics', 249.00, 12),
    (5, 'Noise-Cancelling Headphones', 'Electronics', 199.99, 20),
    (6, 'Desk Lamp', 'Home', 34.50, 60),
    (7, 'Office Chair', 'Furniture', 179.00, 8),
    (8, 'Standing Desk', 'Furniture', 449.00, 5),
    (9, 'Bookshelf', 'Furniture', 129.00, 0),
    (10, 'Coffee Mug', 'Home', 9.99, 300),
    (11, 'Water Bottle', 'Sports', 14.50, 150),
    (12, 'Yoga Mat', 'Sports', 29.99, 75),
    (13, 'Running Shoes', 'Sports', 119.00, 30),
    (14, 'Notebook Pack', 'Stationery', 12.00, 200),
    (15, 'Fountain Pen', 'Stationery', 59.00, 25),
    (16, 'Backpack', 'Accessories', 69.00, 40),
    (17, 'Phone Case', 'Accessories', 19.99, 0),
    (18, 'Throw Pillow', 'Home', 24.99, 90),
    (19, 'Dumbbell Set', 'Sports', 89.50, 15),
    (20, 'Desk Organizer', 'Stationery', 22.00, 55),
    (21, 'Laptop Stand', 'Electronics', 45.00, 35),
    (22, 'Picture Frame', 'Home', 15.00, 70);

INSERT INTO orders (order_id, customer_id, order_date, status, shipped_date) VALUES
    (1, 1, '2023-01-08', 'delivered', '2023-01-10'),
    (2, 2, '2023-01-15', 'delivered', '2023-01-17'),
    (3, 4, '2023-02-02', 'delivered', '2023-02-04'),
    (4, 1, '2023-02-20', 'delivered', '2023-02-21'),
    (5, 5, '2023-03-05', 'cancelled', NULL),
    (6, 6, '2023-03-18', 'delivered', '2023-03-20'),
    (7, 8, '2023-04-01', 'delivered', '2023-04-03'),
    (8, 3, '2023-04-22', 'delivered', '2023-04-26'),
    (9, 9, '2023-05-10', 'delivered', '2023-05-12'),
    (10, 10, '2023-05-28', 'cancelled', NULL),
    (11, 2, '2023-06-14', 'delivered', '2023-06-16'),
    (12, 12, '2023-07-03', 'delivered', '2023-07-05'),
    (13, 13, '2023-07-19', 'delivered', '2023-07-21'),
    (14, 1, '2023-08-05', 'delivered', '2023-08-07'),
    (15, 14, '2023-08-30', 'delivered', '2023-09-01'),
    (16, 4, '2023-09-12', 'delivered', '2023-09-14'),
    (17, 8, '2023-10-02', 'delivered', '2023-10-04'),
    (18, 7, '2023-10-25', 'cancelled', NULL),
    (19, 16, '2023-11-11', 'delivered', '2023-11-13'),
    (20, 12, '2023-11-24', 'delivered', '2023-11-27'),
    (21, 17, '2023-12-03', 'delivered', '2023-12-05'),
    (22, 6, '2023-12-15', 'delivered', '2023-12-18'),
    (23, 1, '2024-01-09', 'delivered', '2024-01-11'),
    (24, 18, '2024-01-22', 'shipped', '2024-01-24'),
    (25, 5, '2024-02-06', 'shipped', '2024-02-08'),
    (26, 9, '2024-02-19', 'shipped', '2024-02-21'),
    (27, 13, '2024-03-02', 'pending', NULL),
    (28, 4, '2024-03-10', 'pending', NULL),
    (29, 2, '2024-03-15', 'pending', NULL),
    (30, 10, '2024-03-20', 'shipped', '2024-03-22');

INSERT INTO order_items (order_id, product_id, quantity, unit_price) VALUES
    (1, 1, 2, 24.99),
    (1, 14, 3, 12.00),
    (2, 4, 1, 249.00),
    (2, 3, 1, 39.00),
    (3, 7, 1, 179.00),
    (4, 10, 4, 9.99),
    (4, 6, 1, 34.50),
    (5, 8, 1, 449.00),
    (6, 2, 1, 89.50),
    (6, 1, 1, 24.99),
    (7, 12, 2, 29.99),
    (7, 11, 2, 14.50),
    (8, 13, 1, 119.00),
    (9, 5, 1, 199.99),
    (9, 17, 1, 19.99),
    (10, 15, 2, 59.00),
    (11, 16, 1, 69.00),
    (11, 11, 1, 14.50),
    (12, 4, 2, 249.00),
    (13, 19, 1, 89.50),
    (13, 12, 1, 29.99),
    (14, 20, 2, 22.00),
    (14, 14, 5, 12.00),
    (14, 15, 1, 59.00),
    (15, 6, 2, 34.50),
    (16, 8, 1, 449.00),
    (16, 7, 1, 179.00),
    (17, 10, 6, 9.99),
    (18, 5, 1, 199.99),
    (19, 18, 3, 24.99),
    (19, 10, 2, 9.99),
    (20, 1, 1, 24.99),
    (20, 2, 1, 79.50),
    (21, 13, 1, 119.00),
    (21, 11, 3, 14.50),
    (22, 9, 1, 129.00),
    (23, 4, 1, 249.00),
    (23, 3, 2, 39.00),
    (24, 12, 1, 29.99),
    (25, 16, 2, 69.00),
    (26, 14, 10, 10.00),
    (27, 5, 1, 199.99),
    (27, 1, 1, 24.99),
    (28, 20, 1, 22.00),
    (29, 7, 2, 179.00),
    (30, 13, 2, 119.00),
    (30, 11, 1, 14.50);
